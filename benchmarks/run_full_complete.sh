#!/usr/bin/env bash
# (stop 12) Completing the full budget (benchmarks/results/full/): the Adam sweep to the
# issue's five lrs {1e-4 .. 1e-2} on every task, a second seed for every SAC and MiniLM row,
# and the rest of the field (DAdaptAdam, DoG, MomSPS, the base SPS and DAdaptSGD, the
# SGD+momentum sweep) on the neural tasks. Two lanes, one thread each, resumable (finished
# runs are skipped); each lane is ordered so that an interrupted lane still leaves the most
# needed rows first; c and d ran when a and b had finished (d: a third seed for the whole
# field, task by task).   Usage: benchmarks/run_full_complete.sh a|b|c|d
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results/full
run() { "$PY" -m lrfree.bench --budget full --tasks "$1" --optimizers "$2" \
            --seeds 0,1 --threads 1 --out "$OUT" --no-plots --no-progress; }
run3() { "$PY" -m lrfree.bench --budget full --tasks "$1" --optimizers "$2" \
            --seeds 0,1,2 --threads 1 --out "$OUT" --no-plots --no-progress; }
FIELD=psdasgd,pssps,adam-sweep,prodigy,sf-adamw,dadapt-adam,dog,momsps,sps,dadaptsgd,sgd-sweep
case "${1:?lane a, b, c or d}" in
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
c)  # Adam at PS-DA-SGD's own peak lr (mean over seeds, benchmarks/estimate_peaks.py):
    # separates the level the estimate settles at from the time its warm-up takes; then
    # larger starts, and the rest of the field on SAC and MiniLM
    run vgg adam@2e-3
    run vit adam@2.4e-3
    run resnet20 adam@2.7e-3
    run minilm-wordnet psdasgd-start1e-5,psdasgd-start1e-4
    run vit,resnet20,vgg psdasgd-start1e-4
    run vgg sgd-sweep
    run sac-hopper dadapt-adam,dog,momsps
    run minilm-wordnet sgd-sweep
    run sac-hopper sps,dadaptsgd
    run sac-hopper sgd-sweep
    ;;
d)  # larger starts on the other tasks, then a third seed for the whole field
    run resnet20,vgg,vit psdasgd-start1e-5
    run segmentation,simclr psdasgd-start1e-4,psdasgd-start1e-5
    run3 vit "$FIELD,adam@2.4e-3"
    run3 simclr "$FIELD"
    run3 segmentation "$FIELD,adam@3e-2,sgdm@3e-1"
    run3 vgg "$FIELD,adam@2e-3"
    run3 logreg "$FIELD,psdasgd-avg,adam@3e-2,adam@1e-1,sgdm@3e-1,sgdm@1"
    run3 resnet20 "$FIELD,adam@2.7e-3"
    run sac-hopper psdasgd-start1e-4
    ;;
esac
