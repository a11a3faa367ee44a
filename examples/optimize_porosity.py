"""The CD that calenders an electrode to a target porosity, with calbatch's Python API.

    python3 examples/optimize_porosity.py                      # the shipped example electrode, porosity 0.30
    python3 examples/optimize_porosity.py --porosity 0.28 --electrode my_electrode.npy --model my.onnx

The model is loaded once; scipy.optimize then asks for porosity(CD) wherever it needs it, and each
answer is a full free rollout of the model from the uncalendered electrode, measured.
"""

import argparse

from calbatch.optimize import Target, load_electrode, optimize
from calbatch.screen import Predictor

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--electrode", default=None, help="volume or pack file (default: the shipped example)")
parser.add_argument("--model", default=None, help="ONNX model (default: the shipped one)")
parser.add_argument("--porosity", type=float, default=0.30, help="target porosity (default 0.30)")
args = parser.parse_args()

predictor = Predictor(args.model)  # load once: every evaluation reuses the open session
electrode = load_electrode(args.electrode)
result = optimize(electrode, Target("porosity", args.porosity), predictor)

for point in result["curve"]:  # what the optimizer looked at, in CD order
    print(f"CD {point['cd_percent']:7.3f} %  porosity {point['porosity']:.4f}  ({point['stage']})")
answer = result["answer"]
print(f"target porosity {args.porosity:g}: CD {answer['cd_percent']:.2f} % gives {answer['porosity']:.4f} "
      f"({result['evaluations']} rollouts, {result['seconds']:.1f} s)")
