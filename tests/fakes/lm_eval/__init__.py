"""A stand-in for lm-evaluation-harness (its tasks' data comes from the hub, unreachable in tests), keeping the part of
its contract bapo relies on: ``simple_evaluate(model=HFLM(...), tasks=[...])`` returns ``{"results": {task: {"acc,none":
value}}}`` on the process whose ``LOCAL_RANK`` is 0 and None elsewhere, as lm-eval 0.4.13 does. Each call appends a
line to ``$FAKE_LM_EVAL_LOG``, so a test counts how often, and where, the harness ran."""

import json
import os

import torch


def simple_evaluate(model, tasks):
    m = model.model
    with torch.no_grad():
        value = float(m(torch.tensor([[1, 2, 3, 4]], device=m.device)).logits.float().mean())
    with open(os.environ["FAKE_LM_EVAL_LOG"], "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "rank": os.environ.get("RANK", "0"), "value": value}) + "\n")
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return None
    return {"results": {t: {"alias": t, "acc,none": value, "acc_stderr,none": 0.0} for t in tasks}}
