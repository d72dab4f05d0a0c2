"""Training state loads without unpickling: exact round trips, planted pickle payloads refused, source scan."""

import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from onereward import train_state
from onereward.judge.train import load_checkpoint
from onereward.rl.checkpoint import Checkpointer

PACKAGE = Path(__file__).resolve().parents[1] / "onereward"
UNSAFE = re.compile(r"weights_only\s*=\s*False|\bpickle\.loads?\b|\bUnpickler\b|allow_pickle\s*=\s*True|"
                    r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", re.M)


class Payload:
    """Unpickling this creates ``marker``: stands in for arbitrary code in a planted file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def planted(marker: Path) -> bytes:
    return pickle.dumps({"state": Payload(marker)}, protocol=4)


class OneProcess:
    """The parts of an ``accelerate.Accelerator`` the checkpointer uses, for a single process."""

    process_index, num_processes, is_main_process = 0, 1, True

    def wait_for_everyone(self):
        pass


def _trained_adamw(seed: int = 0, steps: int = 3):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.8, 0.95), weight_decay=0.1)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(16, 4)).pow(2).mean().backward()
        opt.step()
    return model, opt


def test_payload_is_live(tmp_path):
    """The planted bytes really run code when unpickled, so the refusals below mean something."""
    marker = tmp_path / "ran"
    pickle.loads(planted(marker))
    assert marker.exists()


def test_optimizer_state_round_trip_is_exact(tmp_path):
    model, opt = _trained_adamw()
    train_state.save_optimizer(opt, tmp_path)
    twin = _trained_adamw(steps=0)[0]
    twin.load_state_dict(model.state_dict())
    opt2 = torch.optim.AdamW(twin.parameters(), lr=1.0)
    train_state.load_optimizer(opt2, tmp_path)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]  # lr, betas (a tuple), eps, weight_decay, flags
    assert type(b["param_groups"][0]["betas"]) is tuple
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for k in ("step", "exp_avg", "exp_avg_sq"):
            x, y = a["state"][i][k], b["state"][i][k]
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), (i, k)
    torch.manual_seed(7)
    x = torch.randn(16, 4)
    for m, o in ((model, opt), (twin, opt2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    assert {f.suffix for f in tmp_path.iterdir()} == {".json", ".safetensors"}


def test_rng_states_round_trip_exactly(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # leaves a cached Gaussian in NumPy's legacy state
    train_state.save_rng(tmp_path)

    def draw():
        return random.random(), random.getrandbits(64), np.random.normal(), np.random.rand(3).tolist(), torch.rand(3).tolist()

    first = draw()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    train_state.load_rng(tmp_path)
    assert draw() == first


def test_tree_refuses_what_json_cannot_hold(tmp_path):
    with pytest.raises(TypeError, match="optimizer.extra"):
        train_state.save_tree({"extra": object()}, tmp_path, "optimizer")


def _policy_checkpoint(root: Path) -> tuple[Checkpointer, Path, torch.optim.Optimizer]:
    model, opt = _trained_adamw()
    ck = Checkpointer(root, "fp", OneProcess())
    weights = dict(model.named_parameters())
    path = ck.save(2, weights, weights, opt.state_dict(), {"k|0": torch.ones(2)}, None, extra={"val": [{"step": 2}]})
    return ck, path, opt


def test_policy_checkpoint_resumes_from_safetensors_and_json_only(tmp_path):
    ck, path, opt = _policy_checkpoint(tmp_path / "ckpt")
    assert {f.suffix for f in path.iterdir()} == {".json", ".safetensors"}
    opt2 = _trained_adamw(steps=0)[1]
    state = ck.load(ck.latest())
    opt2.load_state_dict(state["optimizer"])
    assert state["step"] == 2 and state["extra"] == {"val": [{"step": 2}]}
    assert torch.equal(state["refcache"]["k|0"], torch.ones(2))
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


def test_a_checkpoint_of_another_process_count_is_kept_and_named_not_resumed(tmp_path):
    _, path, _ = _policy_checkpoint(tmp_path / "ckpt")
    two = OneProcess()
    two.num_processes = 2
    ck = Checkpointer(tmp_path / "ckpt", "fp", two)
    ck.clear_stale()
    with pytest.raises(RuntimeError, match=r"step-000002 \(step 2\) was written by 1 process\(es\) and this run has 2"):
        ck.latest()
    assert (path / "meta.json").is_file(), "the other run's checkpoint must not be deleted"


@pytest.mark.parametrize("name", ["optimizer.pt", "rng-rank0.pt", "dvclive/metrics.json"])
def test_policy_resume_refuses_a_planted_pickle(tmp_path, name):
    ck, path, _ = _policy_checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "payload-ran"
    (path / name).parent.mkdir(exist_ok=True)
    (path / name).write_bytes(planted(marker))
    with pytest.raises(train_state.UnsafeCheckpoint, match=rf"refusing to resume: {re.escape(str(Path(name)))} "):
        ck.load(ck.latest())
    assert not marker.exists()


def test_policy_resume_refuses_an_old_format_checkpoint(tmp_path):
    """The layout before this change: optimizer and RNG as pickles next to a valid meta.json."""
    ck, path, _ = _policy_checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "payload-ran"
    for stem in ("optimizer", "rng-rank0"):
        (path / f"{stem}.json").unlink()
        (path / f"{stem}.safetensors").unlink()
        (path / f"{stem}.pt").write_bytes(planted(marker))
    assert ck.latest() == path  # settings match: it would be resumed
    with pytest.raises(train_state.UnsafeCheckpoint, match="older versions"):
        ck.load(path)
    assert not marker.exists()


def test_judge_resume_refuses_a_planted_pickle(tmp_path):
    latest = tmp_path / "latest"
    latest.mkdir()
    (latest / "state.json").write_text('{"step": 2, "fingerprint": "fp", "format": 2}')
    marker = tmp_path / "payload-ran"
    (latest / "optimizer.pt").write_bytes(planted(marker))
    with pytest.raises(train_state.UnsafeCheckpoint, match="optimizer.pt"):
        load_checkpoint(latest, "fp", judge=None, opt=None)
    assert not marker.exists()


def test_judge_ignores_an_old_layout(tmp_path, capsys):
    latest = tmp_path / "latest"
    latest.mkdir()
    (latest / "state.json").write_text('{"step": 2, "fingerprint": "fp", "adam_steps": {}}')
    assert load_checkpoint(latest, "fp", judge=None, opt=None) == 0
    assert "older layout" in capsys.readouterr().out


def test_scan_catches_unsafe_loads():
    for line in ("torch.load(p, weights_only=False)", "x = pickle.load(f)", "pickle.loads(b)", "import pickle",
                 "np.load(p, allow_pickle=True)"):
        assert UNSAFE.search(line), line
    assert not UNSAFE.search("torch.load(p, weights_only=True)  # pickled weights are skipped")


def test_package_has_no_unpickling():
    hits = [f"{f.relative_to(PACKAGE.parent)}:{src[: m.start()].count(chr(10)) + 1}: {m.group(0).strip()}"
            for f in sorted(PACKAGE.rglob("*.py")) for src in [f.read_text()] for m in UNSAFE.finditer(src)]
    assert not hits, "unsafe deserialization in the package: " + "; ".join(hits)
