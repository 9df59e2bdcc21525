"""Exploratory pilots at 100 labels (seed 0), run from a fixed worktree; one JSON line per epoch."""
import json, sys, time
import torch
from ssvae import RunConfig
from ssvae import data as ssdata
from ssvae.train import train

torch.set_num_threads(1)
PILOTS = {
    "joint-b100-w1-a46": dict(protocol="joint", lr=4.2e-4, aux_multiplier=46.0),
    "joint-b10-w1-a50": dict(protocol="joint", sup_batch_size=10, lr=3e-4, aux_multiplier=50.0),
    "joint-b100-w1-a46-wd1e-4": dict(protocol="joint", lr=4.2e-4, aux_multiplier=46.0, weight_decay=1e-4),
    "bench-a300-lr3e-4": dict(protocol="bench", lr=3e-4, aux_multiplier=300.0),
    "joint-b100-w0.01-a46": dict(protocol="joint", lr=4.2e-4, aux_multiplier=46.0, sup_weight=0.01),
}
names = sys.argv[1].split(",")
epochs = int(sys.argv[2])
data = ssdata.load(100, 0)
for name in names:
    cfg = RunConfig(estimator="enum", aux=True, labels=100, seed=0, epochs=epochs, batch_size=100, **PILOTS[name])
    t0 = time.time()
    def cb(ev, name=name):
        if ev["event"] == "epoch":
            print(json.dumps({"pilot": name, **{k: ev[k] for k in ("epoch", "valid_acc", "test_acc", "loss_sup", "loss_unsup", "loss_aux")}, "wall": round(time.time() - t0)}), flush=True)
    r = train(cfg, data, callback=cb, evaluation=__import__("ssvae.evaluate", fromlist=["EvalPlan"]).EvalPlan(elbo_images=0, iwae_images=0))
    print(json.dumps({"pilot": name, "done": True, **{k: r.metrics[k] for k in ("best_valid_acc", "test_acc_at_best_valid", "best_epoch")}}), flush=True)
