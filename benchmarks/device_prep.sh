#!/usr/bin/env bash
# Prepare, on a machine with network, what benchmarks/device_check.py needs on a GPU machine without:
#   .whl/                        wheels the GPU machine's Python lacks: kornia (+ kornia-rs), submitit,
#                                lightly (+ hydra-core, omegaconf, antlr4 runtime); the rest of
#                                lightly's needs (pytorch-lightning, lightning-utilities, ...) are there
#   .data/cifar10-jpeg.tar.xz    the CIFAR-10 JPEG folder of ../shared (about 19 MB), when it is there
# Both folders are ignored by git: carry them with the repository explicitly (about 27 MB together),
# e.g. carry=[".whl", ".data"] for the device machine.
# device_check.py installs the wheels with pip --no-index when an import fails, and unpacks the data.
#
# Usage: [PYTHON=python-with-the-project] bash benchmarks/device_prep.sh [PYTHON_VERSION]
#   PYTHON: whose kornia and submitit versions to ship (default .venv/bin/python, else python3);
#   PYTHON_VERSION: the GPU machine's (default 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-3.12}
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
"$PYTHON" -c "import kornia, submitit" 2>/dev/null || {
    echo "device_prep: $PYTHON cannot import kornia and submitit; set PYTHON to the project's python" >&2; exit 1; }
PIP=("$PYTHON" -m pip)

version() {  # the version installed here, so both machines run the same code
    "${PIP[@]}" show "$1" 2>/dev/null | sed -n 's/^Version: //p'
}
pins=(kornia=="$(version kornia)" kornia-rs=="$(version kornia_rs)" submitit=="$(version submitit)"
      lightly==1.6.0 hydra-core==1.3.2 omegaconf==2.3.0)
for pin in "${pins[@]}"; do [[ $pin != *== ]] || { echo "device_prep: ${pin%==} is not installed here" >&2; exit 1; }; done

rm -rf .whl && mkdir -p .whl
"${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${pins[@]}"
"${PIP[@]}" wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # published as a source archive only
echo "device_prep: $(ls .whl | wc -l) wheels in .whl/ ($(du -sh .whl | cut -f1))"

CIFAR=../shared/datasets/cifar10-jpeg
if [[ -d $CIFAR/train ]]; then
    mkdir -p .data
    tar -C "$(dirname "$CIFAR")" -cf - "$(basename "$CIFAR")" | xz -6 -T0 >.data/cifar10-jpeg.tar.xz.tmp
    mv .data/cifar10-jpeg.tar.xz.tmp .data/cifar10-jpeg.tar.xz
    echo "device_prep: .data/cifar10-jpeg.tar.xz ($(du -sh .data/cifar10-jpeg.tar.xz | cut -f1))"
else
    echo "device_prep: no $CIFAR here; device_check.py will need --data" >&2
fi
echo "device_prep: carry .whl/ and .data/ (ignored by git); on the GPU machine, from the repository root:" \
     "python3 benchmarks/device_check.py"
