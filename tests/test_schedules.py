import pytest
import torch

from maskgit_cli import schedules
from maskgit_cli.errors import ConfigError


@pytest.mark.parametrize("name", list(schedules.SCHEDULES))
def test_gamma_ends_and_monotone(name):
    assert schedules.gamma(name, 0.0).item() == pytest.approx(1.0)
    assert schedules.gamma(name, 1.0).item() == pytest.approx(0.0, abs=1e-12)
    g = schedules.gamma(name, torch.linspace(0, 1, 1001))
    assert (g.diff() <= 1e-12).all() and (g >= 0).all() and (g <= 1).all()


def test_registry_has_the_lab_schedules_and_more():
    assert {"cosine", "linear", "square", "sqrt", "cubic", "arccos"} <= set(schedules.SCHEDULES)


def test_known_values():
    assert schedules.gamma("cosine", 0.5).item() == pytest.approx(2**-0.5)
    assert schedules.gamma("square", 0.5).item() == pytest.approx(0.75)
    assert schedules.gamma("arccos", 0.5).item() == pytest.approx(2 / 3)


def test_unknown_schedule():
    with pytest.raises(ConfigError, match="unknown mask schedule 'cos'.*cosine"):
        schedules.get("cos")
