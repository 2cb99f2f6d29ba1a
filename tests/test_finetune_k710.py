"""Kinetics-710: three small label files made here are merged by normalised name; a file naming one class
twice is refused with its path and line; training clips seen in any evaluation list are removed."""

import json

import pytest

from viclip.finetune.k710 import KineticsSource, build_k710, build_label_map, read_label_map, source_key


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
    assert "K600 needs --k600-classes, --k600-videos too" in capsys.readouterr().err
