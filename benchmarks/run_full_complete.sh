#!/usr/bin/env bash
# (stop 12) Completing the full budget (benchmarks/results/full/): the Adam sweep to the
# issue's five lrs {1e-4 .. 1e-2} on every task, a second seed for every SAC and MiniLM row,
# and the rest of the field (DAdaptAdam, DoG, MomSPS, the base SPS and DAdaptSGD, the
# SGD+momentum sweep) on the neural tasks. Two lanes, one thread each, resumable (finished
# runs are skipped); each lane is ordered so that an interrupted lane still leaves the most
# needed rows first.   Usage: benchmarks/run_full_complete.sh a|b
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results/full
run() { "$PY" -m lrfree.bench --budget full --tasks "$1" --optimizers "$2" \
            --seeds 0,1 --threads 1 --out "$OUT" --no-plots --no-progress; }
case "${1:?lane a or b}" in
a)  # the cheaper vision tasks, then ResNet-20
    run vit,simclr,segmentation adam@1e-4,adam@3e-4
    run resnet20 adam@1e-4,adam@3e-4
    run vit,simclr,segmentation dadapt-adam,dog,momsps
    run vit,simclr,segmentation sps,dadaptsgd
    run resnet20 dadapt-adam,dog,momsps,sps,dadaptsgd
    run vit,simclr,segmentation sgd-sweep
    run resnet20 sgd-sweep
    ;;
b)  # the expensive tasks: MiniLM, VGG, SAC
    run minilm-wordnet adam@1e-4,sf-adamw,adam@3e-3,adam@1e-2
    run vgg adam@1e-4
    run sac-hopper prodigy,sf-adamw,adam@1e-3
    run vgg dog,momsps,sps,dadaptsgd
    run sac-hopper adam@1e-4,pssps
    run minilm-wordnet dadapt-adam,dog,momsps,sps,dadaptsgd
    run sac-hopper adam@3e-3,adam@1e-2
    run vgg sgd-sweep
    ;;
esac
