"""Memory planning: how much one device needs for a training step, and a meter to check it.

    plan = plan_memory(PlanRequest("imagenet-small", batch_size=32, height=224, width=224,
                                   precision="bf16", zero_stage=2, world_size=8))
    measured = measure_peak_memory(PlanRequest("tiny", 8, 32, 32))   # real steps, fp32, one process
"""

from mdeq.planner.estimate import MemoryPlan, PlanRequest, format_plan, plan_memory
from mdeq.planner.live_bytes import LiveTensorBytes
from mdeq.planner.measure import Measurement, measure_peak_memory
from mdeq.planner.zero import ZeroBytes, zero_bytes

__all__ = ["LiveTensorBytes", "Measurement", "MemoryPlan", "PlanRequest", "ZeroBytes", "format_plan",
           "measure_peak_memory", "plan_memory", "zero_bytes"]
