import xfreeze
from harness import Spec
from xfreeze.model.summary import collapse

CNN = Spec("cnn", (4, 3))


def test_summary_rows_and_totals(fw, capsys):
    model = fw.build(CNN)
    xfreeze.freeze(model, "0", "1")
    s = xfreeze.summary(model)
    printed = capsys.readouterr().out
    assert [r.name for r in s.rows] == ["0", "1", "3", "4", "8"]
    assert [r.norm for r in s.rows] == ["", "locked", "", "train", ""]
    assert s.rows[0].parameters == 3 * 9 * 4 + 4 and s.rows[0].trainable == 0 and s.rows[0].frozen == 112
    assert s.counts.total == sum(r.parameters for r in s.rows)
    assert s.counts.frozen == 112 + 8
    assert "xfreeze.summary: Sequential" in printed and "locked" in printed and "total:" in printed


def test_summary_is_the_same_data_in_both_frameworks():
    from harness import kit

    summaries = [xfreeze.summary(kit(n).build(CNN), print_table=False) for n in ("torch", "paddle")]
    strip = [[(r.name, r.parameters, r.trainable, r.norm) for r in s.rows] for s in summaries]
    assert strip[0] == strip[1] and summaries[0].counts == summaries[1].counts


def test_eval_mode_is_shown(fw):
    model = fw.build(CNN)
    model.eval()
    assert xfreeze.summary(model, print_table=False).rows[1].norm == "eval"


def test_blocks_named_with_a_number_suffix_collapse_like_numbered_ones(fw):
    """torchvision's ViT names its blocks ``encoder_layer_0``, ``encoder_layer_1``, ...: identical ones fold into one
    row as ``blocks.0``, ``blocks.1`` do; a name with a leading zero reads back from no number and is left alone."""
    blocks = fw.build(Spec("blocks", (4, 4, 4, 4, 4)))
    model = type(blocks)()
    for i in range(3):
        setattr(model, f"encoder_layer_{i}", blocks[i])
    model.layer_01, model.head = blocks[3], blocks[4]
    xfreeze.freeze(model, "encoder_layer_0")
    rows = [(r.name, r.parameters, r.trainable) for r in collapse(xfreeze.summary(model, print_table=False).rows)]
    assert rows[0] == ("encoder_layer_0.0", 20, 0)
    assert rows[1] == ("encoder_layer_1-2 (x2)", 40, 40)
    assert [name for name, _, _ in rows[2:]] == ["layer_01.0", "head"]
