"""Local data-parallel launching: a run whose process group is torn down right after its last
collectives exits instead of deadlocking (onereward.launch.settle_collectives)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from onereward.launch import _free_port

# Two Gloo processes, each rebuilding its world group round after round. Every round ends as a
# stage does: DDP, an all-gather into tensors Python made and dropped, a barrier, the group
# destroyed, then the DDP model freed (which frees the group). Without settling, a round's
# teardown deadlocks about one time in eight on the 2-core CPU machine with torch 2.13 (runs of 3
# rounds hung in 2 of 6, of 30 rounds in 6 of 6): 60 rounds all but never pass by luck.
SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from onereward.launch import settle_collectives

    def rank_main(rank, port, rounds, settle):
        torch.set_num_threads(1)
        store = dist.TCPStore("127.0.0.1", port, 2, rank == 0)
        for i in range(rounds):
            dist.init_process_group("gloo", store=dist.PrefixStore(f"round{i}", store), rank=rank, world_size=2)
            model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
            model(torch.randn(2, 4)).sum().backward()
            parts = [torch.empty(3) for _ in range(2)]
            dist.all_gather(parts, torch.randn(3))
            del parts
            dist.barrier()
            if settle:
                settle_collectives()
            dist.destroy_process_group()
            del model

    if __name__ == "__main__":
        port, rounds, settle = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
        mp.spawn(rank_main, args=(port, rounds, settle), nprocs=2)
        print("finished")
""")


def _start(tmp_path, rounds: int, settle: bool) -> subprocess.Popen:
    script = tmp_path / "teardown.py"
    script.write_text(SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(_free_port()), str(rounds), "1" if settle else "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """The process's output; kills its whole session (the ranks too) if it runs past ``timeout``."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def test_a_settled_process_group_tears_down_without_deadlock(tmp_path):
    proc = _start(tmp_path, rounds=60, settle=True)
    out, err = _finish(proc, timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "finished" in out


def test_without_settling_the_same_teardown_deadlocks(tmp_path):
    """The case above is the one that hangs: without settle_collectives it does not finish."""
    proc = _start(tmp_path, rounds=200, settle=False)
    with pytest.raises(subprocess.TimeoutExpired):
        _finish(proc, timeout=20)
