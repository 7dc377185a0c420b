"""Issue 15 (defect 1): weight decay in every optimizer, logistic regression on scikit-learn's
digits, batch 128, CosineAnnealingLR(opt, 1000), seed 0. Prints the final full-data loss, the
first step with a non-finite loss and the final d.

    OMP_NUM_THREADS=1 python benchmarks/weight_decay_digits.py PSDASGD,DAdaptSGD,PSSPS,PSDoG,SPS adamw
"""
import torch, lrfree, sys, math
from sklearn.datasets import load_digits
X, y = load_digits(return_X_y=True)
X = torch.tensor(X/16., dtype=torch.float32); y = torch.tensor(y)
def run(make, steps=1000, sched=True):
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    opt = make(model.parameters())
    sch = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 1000) if sched else None
    g = torch.Generator().manual_seed(0)
    nanstep = None
    for k in range(steps):
        idx = torch.randint(0, len(X), (128,), generator=g)
        opt.zero_grad(); loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx]); loss.backward(); opt.step(loss=loss) if 'SPS' in type(opt).__name__ else opt.step()
        if sch: sch.step()
        if not math.isfinite(loss.item()) and nanstep is None: nanstep = k
    full = torch.nn.functional.cross_entropy(model(X), y).item()
    return f"{full:.4g} nan@{nanstep} d={float(opt.param_groups[0].get('d', float('nan'))):.3g}"
names = sys.argv[1].split(",")
for name in names:
    for wd in [0, 1e-4, 1e-2, 0.1]:
        for dec in [True, False]:
            if wd == 0 and not dec: continue
            print(name, wd, dec, run(lambda p: getattr(lrfree, name)(p, weight_decay=wd, decouple=dec)), flush=True)
if "adamw" in sys.argv[2:]:
    for lr in (1e-3, 1e-2):
        for wd in [0, 0.1]:
            print("AdamW", lr, wd, run(lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=wd)), flush=True)
