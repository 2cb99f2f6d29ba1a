"""Kinetics-710: three small label files made here are merged by normalised name; a file naming one class
twice is refused with its path and line; training clips seen in any evaluation list are removed."""

import json
from pathlib import Path

import pytest

from viclip.errors import DataError
from viclip.finetune.k710 import (
    KineticsSource,
    build_k710,
    build_label_map,
    k710_name,
    normalise_label,
    packaged_classes,
    read_label_map,
    source_key,
)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_label_map_merges_duplicates_in_first_seen_order(tmp_path):
    k400 = _write(tmp_path / "k400.txt", ["abseiling", "dyeing hair", "surfing water"])
    k600 = _write(tmp_path / "k600.txt", ["Abseiling", "dyeing_hair", "ice swimming", "surfing  water"])
    k700 = _write(tmp_path / "k700.txt", ["ice swimming", "abseiling", "zumba"])
    label_map = build_label_map({"k400": k400, "k600": k600, "k700": k700})
    assert label_map.classes == ["abseiling", "dyeing hair", "surfing water", "ice swimming", "zumba"]
    assert label_map.sources == {"k400": [0, 1, 2], "k600": [0, 1, 3, 2], "k700": [3, 0, 4]}


def test_label_file_naming_a_class_twice_is_refused_with_file_and_line(tmp_path):
    k400 = _write(tmp_path / "k400.txt", ["abseiling", "dyeing hair"])
    k600 = _write(tmp_path / "k600.txt", ["abseiling", "ice swimming"])
    bad = _write(tmp_path / "k700.txt", ["zumba", "Dyeing Hair", "yoga", "dyeing_hair"])
    with pytest.raises(ValueError, match=r"k700\.txt:4: 'dyeing_hair' is class 'dyeing hair' of line 2"):
        build_label_map({"k400": k400, "k600": k600, "k700": bad})


def _csv(path, rows):
    path.write_text("label,youtube_id,time_start,time_end,split\n" + "".join(
        f"{label},{yt},{start},{start + 10},x\n" for label, yt, start in rows))
    return str(path)


def test_build_k710_removes_training_clips_of_any_eval_set(tmp_path):
    roots = {}
    for name in ("k400", "k600"):
        roots[name] = tmp_path / "videos" / name
        roots[name].mkdir(parents=True)
    k400 = KineticsSource(
        "k400", str(_write(tmp_path / "k400.txt", ["abseiling", "zumba"])),
        _csv(tmp_path / "k400_train.csv", [("abseiling", "aaaaaaaaaaa", 0), ("zumba", "b_bbbbbbbbb", 5),
                                           ("zumba", "ccccccccccc", 0)]),
        str(roots["k400"]), eval=(_csv(tmp_path / "k400_val.csv", [("zumba", "vvvvvvvvvvv", 0)]),))
    k600 = KineticsSource(
        "k600", str(_write(tmp_path / "k600.txt", ["Zumba", "ice swimming"])),
        # a K400 training clip listed again, and one that is in K400's validation set
        _csv(tmp_path / "k600_train.csv", [("Zumba", "ccccccccccc", 0), ("ice swimming", "vvvvvvvvvvv", 30),
                                           ("ice swimming", "ddddddddddd", 0)]),
        str(roots["k600"]),
        eval=(_csv(tmp_path / "k600_val.csv", [("ice swimming", "eeeeeeeeeee", 0)]),
              _csv(tmp_path / "k600_test.csv", [("Zumba", "b_bbbbbbbbb", 0)])))
    report = build_k710([k400, k600], tmp_path / "k710")
    out = tmp_path / "k710"
    assert (out / "classes.txt").read_text().split("\n")[:3] == ["abseiling", "zumba", "ice swimming"]
    train = json.loads((out / "train.json").read_text())
    assert [(source_key(r["video"]), r["caption"]) for r in train] == [
        ("aaaaaaaaaaa", "abseiling"), ("ccccccccccc", "zumba"), ("ddddddddddd", "ice swimming")]
    assert train[0]["video"] == "k400/aaaaaaaaaaa_000000_000010.mp4"  # relative to the common video root
    val = json.loads((out / "val.json").read_text())  # the first eval list of each source; tests only held out
    assert [source_key(r["video"]) for r in val] == ["vvvvvvvvvvv", "eeeeeeeeeee"]
    assert report["counts"]["k400"] == {"listed": 3, "in_eval": 1}
    assert report["counts"]["k600"] == {"listed": 3, "in_eval": 1}
    assert read_label_map(out / "label_map.json").sources == {"k400": [0, 1], "k600": [1, 2]}


def test_a_label_in_no_label_file_names_the_annotation(tmp_path):
    root = tmp_path / "v"
    root.mkdir()
    src = KineticsSource("k400", str(_write(tmp_path / "k400.txt", ["abseiling"])),
                         _csv(tmp_path / "train.csv", [("yoga", "aaaaaaaaaaa", 0)]), str(root))
    with pytest.raises(ValueError, match=r"train\.csv: 1 labels are in no label file"):
        build_k710([src], tmp_path / "out")


def test_make_k710_command_writes_the_lists(tmp_path, monkeypatch, capsys):
    from viclip.commands.make_k710 import main

    videos = tmp_path / "videos" / "k400"
    videos.mkdir(parents=True)
    classes = _write(tmp_path / "k400.txt", ["abseiling", "zumba"])
    train = _csv(tmp_path / "train.csv", [("abseiling", "aaaaaaaaaaa", 0), ("zumba", "vvvvvvvvvvv", 0)])
    val = _csv(tmp_path / "val.csv", [("zumba", "vvvvvvvvvvv", 0)])
    monkeypatch.setattr("sys.argv", ["make_k710", "--out", str(tmp_path / "k710"), "--k400-classes", str(classes),
                                     "--k400-train", train, "--k400-videos", str(videos), "--k400-eval", val])
    main()
    assert json.loads(capsys.readouterr().out)["counts"]["k400"] == {"listed": 2, "in_eval": 1}
    assert [r["caption"] for r in json.loads((tmp_path / "k710" / "train.json").read_text())] == ["abseiling"]
    monkeypatch.setattr("sys.argv", ["make_k710", "--out", str(tmp_path / "k"), "--k600-train", train])
    with pytest.raises(SystemExit):
        main()
    assert "K600 needs --k600-videos too" in capsys.readouterr().err


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "kinetics"  # the public lists, as downloaded


def _public_label_map(order=None):
    return build_label_map({v: packaged_classes(v) for v in ("k400", "k600", "k700")}, order)


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the public lists in ../shared/data/kinetics")
def test_packaged_class_lists_are_the_public_ones():
    for version in ("k400", "k600", "k700", "k710"):
        assert packaged_classes(version).read_text().split() == (SHARED / f"{version}.txt").read_text().split()


def test_the_three_public_lists_merge_to_the_710_classes_of_k710():
    label_map = _public_label_map()
    k710 = [normalise_label(line) for line in packaged_classes("k710").read_text().splitlines() if line.strip()]
    assert len(label_map.classes) == 710 and set(label_map.classes) == set(k710)
    assert label_map.classes[:400] == k710[:400]  # K400's rows first, under their K710 names
    assert [len(label_map.sources[v]) for v in ("k400", "k600", "k700")] == [400, 600, 700]
    # without the renames table the union is 724: each renamed pair would be two classes
    union = {normalise_label(n) for v in ("k400", "k600", "k700") for n in packaged_classes(v).read_text().splitlines()}
    assert len(union - {""}) == 724


def test_k400_head_rows_are_each_k400_class_under_its_k710_name():
    label_map = _public_label_map()
    k400 = [line for line in packaged_classes("k400").read_text().splitlines() if line.strip()]
    rows = label_map.sources["k400"]
    assert [label_map.classes[r] for r in rows] == [k710_name(n) for n in k400]
    assert label_map.classes[rows[k400.index("dying hair")]] == "dyeing hair"
    k700 = label_map.sources["k700"]
    k700_names = [line for line in packaged_classes("k700").read_text().splitlines() if line.strip()]
    assert k700[k700_names.index("dyeing hair")] == rows[k400.index("dying hair")]  # one row, not two


def test_an_explicit_k710_order_lines_up_the_rows(tmp_path):
    label_map = _public_label_map(packaged_classes("k710"))
    k710 = [normalise_label(line) for line in packaged_classes("k710").read_text().splitlines() if line.strip()]
    assert label_map.classes == k710
    k600 = [line for line in packaged_classes("k600").read_text().splitlines() if line.strip()]
    assert [label_map.classes[r] for r in label_map.sources["k600"]] == [k710_name(n) for n in k600]
    short = _write(tmp_path / "order.txt", k710[:-1] + ["not a kinetics class"])
    with pytest.raises(DataError, match=r"order\.txt: the K710 class order names 710 classes.*missing 1.*"
                                        r"not in any label file 1 \['not a kinetics class'\]"):
        _public_label_map(short)


def test_make_k710_takes_the_packaged_lists_and_a_k710_order(tmp_path, monkeypatch, capsys):
    from viclip.commands.make_k710 import main

    args = ["make_k710", "--out", str(tmp_path / "k710"), "--k710-classes", "mmaction2"]
    for v, label in (("k400", "dying hair"), ("k600", "zumba"), ("k700", "dyeing hair")):
        videos = tmp_path / "videos" / v
        videos.mkdir(parents=True)
        train = _csv(tmp_path / f"{v}.csv", [(label, f"{v}aaaaaaaa", 0)])
        args += [f"--{v}-train", train, f"--{v}-videos", str(videos)]
    monkeypatch.setattr("sys.argv", args)
    main()
    assert json.loads(capsys.readouterr().out)["num_classes"] == 710
    classes = (tmp_path / "k710" / "classes.txt").read_text().splitlines()
    assert classes == [normalise_label(n) for n in packaged_classes("k710").read_text().splitlines() if n.strip()]
    train = json.loads((tmp_path / "k710" / "train.json").read_text())
    assert [r["caption"] for r in train] == ["dyeing hair", "zumba", "dyeing hair"]
    monkeypatch.setattr("sys.argv", args[:-4])  # K400 and K600 only: 710 named, 600 merged
    with pytest.raises(SystemExit, match="k710.txt: the K710 class order names 710 classes, the label files merge"):
        main()
