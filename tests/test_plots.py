"""Figures: plots and image grids."""


def test_plot_labels_keep_their_spaces():
    from maskgit_cli.plots import _font

    font = _font()
    assert font.getlength("a b") >= font.getlength("ab") + 3
