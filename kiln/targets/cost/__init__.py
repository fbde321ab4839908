"""Cost models for hardware targets: FPGA latency/resource estimates, the budget search over
reuse factors, and the ASIC area/energy model."""

from kiln.targets.cost.asic_estimate import asic_report
from kiln.targets.cost.budget import SearchResult, search
from kiln.targets.cost.fpga_estimate import FpgaEstimate, LayerCost, estimate
from kiln.targets.cost.fpga_format import format_table
from kiln.targets.cost.fpga_parts import PARTS, Part, get_part
from kiln.targets.cost.fpga_stream import StreamEstimate, estimate_stream

__all__ = ["PARTS", "FpgaEstimate", "LayerCost", "Part", "SearchResult", "StreamEstimate",
           "asic_report", "estimate", "estimate_stream", "format_table", "get_part", "search"]
