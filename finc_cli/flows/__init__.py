"""Invertible layers, each obeying the contract of `flows/base.py`: forward(x) -> (y, logdet), inverse(y)."""

from finc_cli.flows.actnorm import ActNorm
from finc_cli.flows.base import Flow
from finc_cli.flows.baselines import CInCConv2d, EmergingConv2d
from finc_cli.flows.conv1x1 import InvConv1x1
from finc_cli.flows.coupling import AffineCoupling
from finc_cli.flows.finc_conv import FInCConv2d
from finc_cli.flows.logit import LogitPreprocess
from finc_cli.flows.multiscale import SplitPrior, Squeeze
from finc_cli.flows.sequential import FlowSequential

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "CInCConv2d",
    "EmergingConv2d",
    "FInCConv2d",
    "Flow",
    "FlowSequential",
    "InvConv1x1",
    "LogitPreprocess",
    "SplitPrior",
    "Squeeze",
]
