"""Write models/model.pt: the 3x3x3 mean filter (run once; the file is committed)."""

from pathlib import Path

import torch

network = torch.nn.Conv3d(1, 1, 3, padding=1, padding_mode="replicate", bias=False)
with torch.no_grad():
    network.weight.fill_(1.0 / 27.0)
torch.save(network.state_dict(), Path(__file__).resolve().parents[1] / "models" / "model.pt")
