"""EVA against an independent implementation: peft's (``get_eva_state_dict``), on a small
model of Linear layers, the case peft supports.

peft decomposes each layer's inputs with an incremental PCA, which centres them. The
inputs here are zero-mean in every minibatch (each batch holds ``b`` and ``-b``) and the
layers are linear without bias, so every layer's inputs are zero-mean too and centred
and uncentred decompositions coincide: both implementations must give each layer the
same rank and the same components (up to sign).
"""

from __future__ import annotations

import pytest
import torch
from peft import EvaConfig, LoraConfig
from peft.tuners.lora.eva import get_eva_state_dict
from torch import nn

from workflow.lora import add_eva

pytestmark = pytest.mark.usefixtures("torch_one_thread")

LAYERS = ("fc1", "fc2", "fc3")


class Linears(nn.Module):
    """Three bias-free Linear layers and a head; the first two squash some directions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(12, 16, bias=False)
        self.fc2 = nn.Linear(16, 16, bias=False)
        self.fc3 = nn.Linear(16, 12, bias=False)
        self.head = nn.Linear(12, 3, bias=False)
        with torch.no_grad():  # give the layers' inputs spectra of different shapes
            self.fc1.weight.mul_(torch.logspace(0, -1.5, 16)[:, None])
            self.fc2.weight.mul_(torch.logspace(0, -1, 16)[:, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc3(self.fc2(self.fc1(x))))


def _batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    scales = torch.logspace(0, -0.3, 12)
    rotation, _ = torch.linalg.qr(torch.randn(12, 12, generator=generator))
    halves = [torch.randn(32, 12, generator=generator) * scales @ rotation for _ in range(4)]
    return [torch.cat([h, -h]) for h in halves]


@pytest.mark.parametrize("rank,rho", [(2, 1.0), (2, 2.0), (3, 2.0), (2, 3.0)])
def test_eva_gives_the_ranks_and_components_of_peft(rank: int, rho: float) -> None:
    batches = _batches()
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(LAYERS), init_lora_weights="eva",
                        eva_config=EvaConfig(rho=rho, tau=0.99999))
    reference = get_eva_state_dict(Linears(), batches, peft_config=config, forward_fn=lambda model, x: model(x),
                                   prepare_model_inputs_fn=None, prepare_layer_inputs_fn=None,
                                   show_progress_bar=False)
    ours = Linears().double()
    adapters, found = add_eva(ours, rank, 2 * rank, [b.double() for b in batches], rho=rho)

    assert found.ranks == {name: len(reference.get(name, [])) for name in LAYERS}
    assert sum(found.ranks.values()) == rank * len(LAYERS)
    if rho > 1:
        assert len(set(found.ranks.values())) > 1  # the case redistributes something
    # peft's components come from a randomised low-rank SVD: close, not exact
    for name, lora in adapters.items():
        cosines = (lora.down * reference[name].double()).sum(1).abs()
        torch.testing.assert_close(cosines, torch.ones(lora.rank, dtype=torch.float64), rtol=0, atol=1e-2)
