"""What every benchmark prints first: the machine its figures come from."""

from __future__ import annotations

import os
import platform

import torch


def machine() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return f"{platform.processor() or platform.machine()}, {device}, torch {torch.__version__}"
