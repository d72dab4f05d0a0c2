"""The OneReward judge: one Qwen2.5-VL answering Yes/No for every task and dimension.

``P(Yes)`` is defined once, in :mod:`onereward.judge.model`: the softmax over the two answer
tokens {"Yes", "No"} of the next-token logits, ``sigmoid(logit_Yes - logit_No)``.
"""
