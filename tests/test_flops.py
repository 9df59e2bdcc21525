"""FLOP counts from layer shapes, and the matmul rate they are compared with."""
import pytest

from ssvae.flops import STEP_KINDS, Sizes, linear_flops, matmul_rate, step_flops
from ssvae.model import SSVAE

TINY = Sizes(input_size=12, num_classes=10, z_dim=3, hidden=(8,))


def test_linear_layer_counts():
    assert linear_flops(5, 12, 8, input_grad=False) == (2 * 5 * 12 * 8 + 40, 2 * 5 * 12 * 8 + 40)
    assert linear_flops(5, 12, 8, input_grad=True) == (1000, 1960)


def test_tiny_net_by_hand():
    """12 pixels, 8 hidden units, z_dim 3, batch 5, counted on paper."""
    # encoder_z: (12+10 -> 8) on data: fwd 1760+40, bwd 1760+40 (no input grad) = 3600;
    #            two heads (8 -> 3): fwd 240+15, bwd 240+15+240 = 750 each
    # decoder:   (3+10 -> 8): fwd 1040+40, bwd 1040+40+1040 (z needs a gradient) = 3200;
    #            (8 -> 12): fwd 960+60, bwd 960+60+960 = 3000
    sup = step_flops("sup", 5, TINY)
    assert sup["encoder_z"] == 3600 + 750 + 750
    assert sup["decoder"] == 3200 + 3000
    assert sup["encoder_y"] == 0
    assert sup["total"] == 11300
    assert sup["forward"] == 1800 + 255 + 255 + 1080 + 1020
    # encoder_y: (12 -> 8) on data: 1000 + 1000; (8 -> 10): fwd 800+50, bwd 800+50+800
    aux = step_flops("aux", 5, TINY)
    assert aux["total"] == aux["encoder_y"] == 2000 + 2500
    assert step_flops("baseline", 5, TINY) == aux
    assert step_flops("unsup-sampled", 5, TINY)["total"] == 11300 + 4500
    assert step_flops("unsup-enum", 5, TINY)["total"] == 10 * 11300 + 4500


def test_enum_step_is_ten_sampled_steps_for_encoder_z_and_decoder():
    enum, sampled = step_flops("unsup-enum"), step_flops("unsup-sampled")
    for net in ("encoder_z", "decoder"):
        assert enum[net] == 10 * sampled[net]
    assert enum["encoder_y"] == sampled["encoder_y"]
    # the whole step: ~10x less the classifier's share
    assert 7.0 < enum["total"] / sampled["total"] < 10.0
    assert step_flops("unsup-enum-seq") == enum


def test_default_sizes_match_the_model():
    assert Sizes.of(SSVAE()) == Sizes()
    assert Sizes.of(SSVAE(input_size=12, z_dim=3, hidden=(8, 6))) == Sizes(12, 10, 3, (8, 6))


def test_counts_are_about_three_forward_passes():
    for kind in STEP_KINDS:
        f = step_flops(kind)
        assert 2.0 * f["forward"] < f["total"] < 3.0 * f["forward"] + 1


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown step kind"):
        step_flops("unsup")


def test_matmul_rate_is_measured():
    r = matmul_rate(200, 100, 50, repeats=3, warmup=1)
    assert r["gflops_median"] > 0 and r["gflops_best"] >= r["gflops_median"]
    assert r["shape"] == [200, 100, 50]
