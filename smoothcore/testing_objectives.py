"""A test kit for authors of training-objective plugins (``register_training_objectives``).

Subclass :class:`ObjectivePluginSuite` under a name pytest collects and say which objective to check::

    from smoothcore.testing import ObjectivePluginSuite

    class TestMyObjective(ObjectivePluginSuite):
        objective_name = "my-objective"
        params = {"temperature": 2.0}   # objective parameters (optional)
        plugin = my_plugin              # registered for the tests when its entry point is not loaded

Every ``test_*`` method then checks, on a small linear classifier and the noises in ``noises``:

- the objective is registered and builds a :class:`smoothcore.objectives.TrainingObjective` whose ``params()`` are
  JSON and rebuild the same objective (the same loss);
- ``loss`` returns a finite scalar and logits ``(batch, classes)`` of the batch's rows;
- the loss is **summed** over the batch's rows (the trainer divides by the global batch size): with a noise that
  depends only on the row, the loss of a batch is the sum of the losses of its two halves;
- gradients reach the model's parameters;
- noise is drawn only through ``noisy`` (so training resumes exactly): the same draws give the same loss whatever
  the global torch generator holds, and the number of rows drawn per image is the declared ``draws``.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import torch
from torch import nn

from smoothcore.noises import make_noise
from smoothcore.objectives import TrainingObjective, make_objective

__all__ = ["ObjectivePluginSuite"]


class _Linear(nn.Module):
    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(dim, classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z.flatten(1))


class ObjectivePluginSuite:
    objective_name: str = ""
    params: dict[str, Any] = {}
    plugin: Any = None
    noises: tuple[tuple[str, float], ...] = (("dssn", 0.5), ("uniform", 0.5))
    image_shape: tuple[int, ...] = (1, 4, 4)
    classes: int = 3
    batch: int = 6

    # -- fixtures -----------------------------------------------------------------------------------------------
    def setup_method(self, method: Any = None) -> None:
        from smoothcore import plugins

        self._saved = plugins.snapshot()
        if self.plugin is not None and self.objective_name not in plugins.registry("objective"):
            plugins.use_plugins(self.plugin)

    def teardown_method(self, method: Any = None) -> None:
        from smoothcore import plugins

        plugins.restore(self._saved)

    @staticmethod
    def skip(reason: str) -> NoReturn:
        import pytest

        pytest.skip(reason)

    def build(self, noise_name: str, sigma: float, **params: Any) -> tuple[TrainingObjective, Any]:
        dim = 1
        for s in self.image_shape:
            dim *= s
        noise = make_noise(noise_name, sigma=sigma, dim=dim, seed=0)
        return make_objective(self.objective_name, noise=noise, **{**self.params, **params}), noise

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(1)
        x = torch.randint(0, 256, (self.batch, *self.image_shape), generator=g).float() / 255
        y = torch.randint(0, self.classes, (self.batch,), generator=g)
        return x, y

    def model(self) -> nn.Module:
        dim = 1
        for s in self.image_shape:
            dim *= s
        return _Linear(dim, self.classes)

    @staticmethod
    def drawing(noise: Any, seed: int = 5):
        """``noisy`` drawing from a generator of its own; ``calls`` counts the rows it drew."""
        g = torch.Generator().manual_seed(seed)
        rows = [0]

        def noisy(x: torch.Tensor) -> torch.Tensor:
            rows[0] += len(x)
            return noise.sample(x, g)

        return noisy, rows

    # -- the checks ---------------------------------------------------------------------------------------------
    def test_is_registered_and_params_rebuild_it(self) -> None:
        from smoothcore.plugins import registry

        assert self.objective_name in registry("objective"), f"{self.objective_name!r} is not registered"
        for noise_name, sigma in self.noises:
            objective, noise = self.build(noise_name, sigma)
            assert isinstance(objective, TrainingObjective)
            params = json.loads(json.dumps(objective.params()))
            again = make_objective(self.objective_name, noise=noise, **params)
            x, y = self.data()
            model = self.model()
            a = objective.loss(model, self.drawing(noise)[0], x, y)[0]
            b = again.loss(model, self.drawing(noise)[0], x, y)[0]
            assert torch.allclose(a, b), "params() do not rebuild the same objective"

    def test_loss_is_a_finite_scalar_and_logits_are_per_row(self) -> None:
        for noise_name, sigma in self.noises:
            objective, noise = self.build(noise_name, sigma)
            x, y = self.data()
            loss, logits = objective.loss(self.model(), self.drawing(noise)[0], x, y)
            assert loss.dim() == 0 and torch.isfinite(loss), f"loss {loss!r} under {noise_name}"
            assert logits.shape == (len(x), self.classes), f"logits of shape {tuple(logits.shape)}"

    def test_loss_is_summed_over_rows(self) -> None:
        objective, noise = self.build(*self.noises[0])
        x, y = self.data()
        model = self.model()
        offsets = torch.rand(len(x), *self.image_shape, generator=torch.Generator().manual_seed(3)) * 0.1

        def row_noise(z: torch.Tensor, rows: slice) -> torch.Tensor:  # depends on the row only
            return z + offsets[rows]

        whole = objective.loss(model, lambda z: row_noise(z, slice(0, len(x))), x, y)[0]
        half = len(x) // 2
        first = objective.loss(model, lambda z: row_noise(z, slice(0, half)), x[:half], y[:half])[0]
        rest = objective.loss(model, lambda z: row_noise(z, slice(half, len(x))), x[half:], y[half:])[0]
        assert torch.allclose(whole, first + rest, rtol=1e-4, atol=1e-5), (
            f"the loss of a batch ({float(whole.detach()):.5g}) is not the sum of its halves' "
            f"({float(first.detach()):.5g} + {float(rest.detach()):.5g}): return the sum over rows, not the mean"
        )

    def test_gradients_reach_the_model(self) -> None:
        for noise_name, sigma in self.noises:
            objective, noise = self.build(noise_name, sigma)
            x, y = self.data()
            model = self.model()
            loss, _ = objective.loss(model, self.drawing(noise)[0], x, y)
            loss.backward()
            grads = [p.grad for p in model.parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
            assert any(g.abs().sum() > 0 for g in grads), "no gradient reaches the model"

    def test_draws_only_through_noisy_and_as_declared(self) -> None:
        for noise_name, sigma in self.noises:
            objective, noise = self.build(noise_name, sigma)
            x, y = self.data()
            model = self.model()
            torch.manual_seed(123)
            noisy, rows = self.drawing(noise)
            a = objective.loss(model, noisy, x, y)[0]
            torch.manual_seed(456)
            b = objective.loss(model, self.drawing(noise)[0], x, y)[0]
            assert torch.equal(a, b), (
                "the loss depends on the global torch generator: draw through noisy only"
            )
            assert rows[0] == objective.draws * len(x), (
                f"declared draws = {objective.draws} per image, drew {rows[0] / len(x):g}"
            )
