"""A run's resume state, resume.pt: everything an epoch's end must keep so that `train.py --resume`
continues as if never stopped (the trainable tensors, AdamW's state, the step, the results so far, the
training curve, and both random streams: torch's and the fast dropout masks'). `run` is train.Run."""
import json

import torch

import dropout
import saving
from record import Results


def save_resume(run, epoch: int):
    """resume.pt: the state after `epoch` with its sha256, written atomically
    (saving.write_resume)."""
    saving.write_resume(run.out / "resume.pt", {
        "epoch": epoch, "step": run.step, "results": json.dumps(run.results.to_dict()),
        "trainable": {n: p.detach().cpu() for n, p in run.trainable}, "steps": run.steps.lines,
        "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
        "rng": torch.get_rng_state(), "dropout_rng": dropout.get_state(run.model)})


def load_resume(run, state) -> int:
    """Restore the state save_resume wrote, read and verified by rundir.claim_out_dir (None: there
    was no resume.pt); returns the epoch to start from."""
    path = run.out / "resume.pt"
    if state is None:
        print(f"--resume: no {path}, starting fresh")
        return 0
    run.step, run.results = state["step"], Results.from_dict(json.loads(state["results"]))
    saving.copy_named(dict(run.trainable), state["trainable"], path)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])  # a disabled scaler saved {} and ignores it
    torch.set_rng_state(state["rng"])
    dropout.set_state(run.model, state.get("dropout_rng"))
    print(f"resumed from {path} after epoch {state['epoch']}")
    return state["epoch"]
