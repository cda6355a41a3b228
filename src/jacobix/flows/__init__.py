"""Normalizing flows on the engine: TarFlow with sequential, Jacobi and GS-Jacobi sampling."""

from jacobix.flows.calibration import AutoScheduleConfig, Calibration, auto_schedule, block_metrics, calibrate
from jacobix.flows.checkpoint import load_apple_checkpoint, load_tarflow, save_tarflow
from jacobix.flows.sampling import BlockPlan, FlowBlockProblem, FlowGuidance, FlowSample, invert_block, sample_tarflow, uniform_schedule
from jacobix.flows.tarflow import TarFlow, TarFlowConfig, denoise

__all__ = [
    "AutoScheduleConfig", "BlockPlan", "Calibration", "FlowBlockProblem", "FlowGuidance", "FlowSample", "TarFlow",
    "TarFlowConfig", "auto_schedule", "block_metrics", "calibrate", "denoise", "invert_block", "load_apple_checkpoint", "load_tarflow",
    "sample_tarflow", "save_tarflow", "uniform_schedule",
]
