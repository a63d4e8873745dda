"""Layer tables generated from the rule equal the literal tables of docs/formats.md §3, and the counts of
docs/adapter.md §5."""
import pytest

from psa_core import AdapterFileError, get_family, recognise_family

SD15_TABLE = [  # i, diffusers attention, H, ComfyUI key — docs/formats.md §3, verbatim
    (0, "down_blocks.0.attentions.0", 320, ("input", 1, 0)), (1, "down_blocks.0.attentions.1", 320, ("input", 2, 0)),
    (2, "down_blocks.1.attentions.0", 640, ("input", 4, 0)), (3, "down_blocks.1.attentions.1", 640, ("input", 5, 0)),
    (4, "down_blocks.2.attentions.0", 1280, ("input", 7, 0)), (5, "down_blocks.2.attentions.1", 1280, ("input", 8, 0)),
    (6, "up_blocks.1.attentions.0", 1280, ("output", 3, 0)), (7, "up_blocks.1.attentions.1", 1280, ("output", 4, 0)),
    (8, "up_blocks.1.attentions.2", 1280, ("output", 5, 0)), (9, "up_blocks.2.attentions.0", 640, ("output", 6, 0)),
    (10, "up_blocks.2.attentions.1", 640, ("output", 7, 0)), (11, "up_blocks.2.attentions.2", 640, ("output", 8, 0)),
    (12, "up_blocks.3.attentions.0", 320, ("output", 9, 0)), (13, "up_blocks.3.attentions.1", 320, ("output", 10, 0)),
    (14, "up_blocks.3.attentions.2", 320, ("output", 11, 0)), (15, "mid_block.attentions.0", 1280, ("middle", 0, 0)),
]
SDXL_RANGES = [  # first i, diffusers attention, depth, H, ComfyUI (block, id) — docs/formats.md §3
    (0, "down_blocks.1.attentions.0", 2, 640, ("input", 4)), (2, "down_blocks.1.attentions.1", 2, 640, ("input", 5)),
    (4, "down_blocks.2.attentions.0", 10, 1280, ("input", 7)), (14, "down_blocks.2.attentions.1", 10, 1280, ("input", 8)),
    (24, "up_blocks.0.attentions.0", 10, 1280, ("output", 0)), (34, "up_blocks.0.attentions.1", 10, 1280, ("output", 1)),
    (44, "up_blocks.0.attentions.2", 10, 1280, ("output", 2)), (54, "up_blocks.1.attentions.0", 2, 640, ("output", 3)),
    (56, "up_blocks.1.attentions.1", 2, 640, ("output", 4)), (58, "up_blocks.1.attentions.2", 2, 640, ("output", 5)),
    (60, "mid_block.attentions.0", 10, 1280, ("middle", 0)),
]


def test_sd15_table_matches_the_reference_rows():
    family = get_family("sd15")
    rows = [(l.index, l.diffusers_name, l.hidden, l.comfy_key) for l in family.layers]
    assert rows == [(i, f"{name}.transformer_blocks.0.attn2", h, key) for i, name, h, key in SD15_TABLE]


def test_sdxl_table_matches_the_reference_rows():
    family = get_family("sdxl")
    expected = []
    for first, name, depth, hidden, (block, block_id) in SDXL_RANGES:
        expected += [(first + t, f"{name}.transformer_blocks.{t}.attn2", hidden, (block, block_id, t))
                     for t in range(depth)]
    assert [(l.index, l.diffusers_name, l.hidden, l.comfy_key) for l in family.layers] == expected
    assert family.num_layers == 70


@pytest.mark.parametrize("name, hidden_sum, processors, projection, effective", [
    ("sd15", 12_480, 19_169_280, 2_754_816, 12_339_456),
    ("sdxl", 83_200, 340_787_200, 7_346_176, 177_739_776),
])
def test_parameter_counts_of_psa_reference_section_2(name, hidden_sum, processors, projection, effective):
    family = get_family(name)
    d = family.context_dim
    assert sum(l.hidden for l in family.layers) == hidden_sum
    assert 2 * d * hidden_sum == processors
    assert 3584 * d + d + 2 * d == projection
    assert d * hidden_sum + projection == effective


def test_recognise_family_from_widths_including_tiny_ones():
    for name in ("sd15", "sdxl"):
        for channels, context in ((320, None), (32, 64)):
            family = get_family(name, channels, context)
            assert recognise_family([l.hidden for l in family.layers], family.context_dim) == family


def test_unknown_layouts_are_named():
    with pytest.raises(AdapterFileError, match="17 value layers.*SD1.5 has 16.*SDXL has 70"):
        recognise_family([320] * 17, 768)
    widths = [l.hidden for l in get_family("sd15").layers]
    widths[3] = 999
    with pytest.raises(AdapterFileError, match="16 value layers"):
        recognise_family(widths, 768)
    with pytest.raises(AdapterFileError, match="allowed: sd15, sdxl"):
        get_family("flux")
