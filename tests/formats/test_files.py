"""The one folder-walking rule of ``push`` and ``base add`` (lora_hub.formats.files).

User trial 2, rows 4, 9, 11, 18 and 26: links out of the folder, link loops, special files and
unprintable names were stored or crashed; ``base add`` and ``push`` disagreed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lora_hub.errors import InvalidAdapterError, InvalidModelError
from lora_hub.formats.files import MAX_LISTED, FolderListing, list_folder, printable_name
from lora_hub.formats.hf import model_files
from lora_hub.formats.peft import list_files


def make(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_regular_files_by_relative_path_hidden_entries_skipped(tmp_path: Path) -> None:
    root = make(tmp_path / "root", {"a.txt": "a", "sub/b.txt": "b", "sub/deeper/c.txt": "c"})
    make(root, {".git/config": "x", ".cache/huggingface/x.lock": "x", ".hidden": "x", "sub/.DS_Store": "x"})
    listing = list_folder(root)
    assert listing.problems == []
    assert {rel: p.read_text() for rel, p in listing.files.items()} == {
        "a.txt": "a",
        "sub/b.txt": "b",
        "sub/deeper/c.txt": "c",
    }


def test_links_that_stay_inside_are_followed(tmp_path: Path) -> None:
    root = make(tmp_path / "root", {"real/w.txt": "w"})
    (root / "file-link").symlink_to(root / "real" / "w.txt")
    (root / "relative-link").symlink_to("real/w.txt")
    (root / "dir-link").symlink_to("real", target_is_directory=True)
    (root / "real" / "sibling").symlink_to("../real/w.txt")
    listing = list_folder(root)
    assert listing.problems == []
    assert sorted(listing.files) == [
        "dir-link/sibling",
        "dir-link/w.txt",
        "file-link",
        "real/sibling",
        "real/w.txt",
        "relative-link",
    ]
    assert {p.read_text() for p in listing.files.values()} == {"w"}


def test_a_root_that_is_itself_a_link_is_walked(tmp_path: Path) -> None:
    real = make(tmp_path / "real", {"a.txt": "a", "sub/b.txt": "b"})
    (real / "inner").symlink_to(real / "a.txt")
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    listing = list_folder(tmp_path / "alias")
    assert listing.problems == [] and sorted(listing.files) == ["a.txt", "inner", "sub/b.txt"]


def test_row04_links_out_loops_and_broken_links_are_each_refused(tmp_path: Path) -> None:
    """Row 4: `ad/notes.txt -> /etc/passwd`, `ad/certs -> /etc/ssl`, `ad/loop -> .` were all stored."""
    root = make(tmp_path / "ad", {"ok.txt": "fine", "sub/x.txt": "x"})
    outside = make(tmp_path / "outside", {"secret.txt": "s"})
    (root / "notes.txt").symlink_to("/etc/passwd")
    (root / "certs").symlink_to("/etc/ssl", target_is_directory=True)
    (root / "loop").symlink_to(".", target_is_directory=True)
    (root / "sub" / "up").symlink_to("..", target_is_directory=True)
    (root / "secret").symlink_to(outside / "secret.txt")
    (root / "sideways").symlink_to("../outside/secret.txt")
    (root / "dangling").symlink_to(tmp_path / "nothing-here")
    listing = list_folder(root)
    real = Path(os.path.realpath(root))
    assert listing.problems == [
        f"certs: a symbolic link that leaves the folder (to {os.path.realpath('/etc/ssl')})",
        "dangling: a broken symbolic link",
        f"loop: a symbolic link that loops back to {real}",
        f"notes.txt: a symbolic link that leaves the folder (to {os.path.realpath('/etc/passwd')})",
        f"secret: a symbolic link that leaves the folder (to {os.path.realpath(outside / 'secret.txt')})",
        f"sideways: a symbolic link that leaves the folder (to {os.path.realpath(outside / 'secret.txt')})",
        f"sub/up: a symbolic link that loops back to {real}",
    ]
    assert sorted(listing.files) == ["ok.txt", "sub/x.txt"]  # everything is looked at; the caller refuses


def test_a_link_to_a_sibling_folder_is_not_a_loop(tmp_path: Path) -> None:
    """Only a link back to a folder above it is a loop: two links to one folder list it twice."""
    root = make(tmp_path / "root", {"shared/a.txt": "a"})
    (root / "one").symlink_to("shared", target_is_directory=True)
    (root / "two").symlink_to("shared", target_is_directory=True)
    listing = list_folder(root)
    assert listing.problems == [] and sorted(listing.files) == ["one/a.txt", "shared/a.txt", "two/a.txt"]


def test_row26_special_files_are_refused_as_not_regular(tmp_path: Path) -> None:
    """Row 26: a FIFO (or a link to /dev/zero) named adapter_config.json was reported "missing"."""
    root = make(tmp_path / "ad", {"ok.txt": "x"})
    os.mkfifo(root / "adapter_config.json")
    os.mkfifo(root / "pipe")
    (root / "via-link").symlink_to("pipe")  # inside the folder, but still not a regular file
    (root / "zero").symlink_to("/dev/zero")
    listing = list_folder(root)
    assert listing.problems == [
        "adapter_config.json: not a regular file (a FIFO, device or socket)",
        "pipe: not a regular file (a FIFO, device or socket)",
        "via-link: not a regular file (a FIFO, device or socket)",
        "zero: a symbolic link that leaves the folder (to /dev/zero)",
    ]


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("a\nb.txt", "a\\nb.txt"),  # row 18: split across two lines by `show`
        ("\x1b[2J\x1b[31mpwned.txt", "\\x1b[2J\\x1b[31mpwned.txt"),  # row 9: cleared the screen
        (os.fsdecode(b"caf\xe9.txt"), "caf\\xe9.txt"),  # row 11: an internal error and an orphan blob
        ("tab\there", "tab\\there"),
        ("bell\x07", "bell\\x07"),
    ],
    ids=["newline", "escape", "non-utf8", "tab", "bell"],
)
def test_unprintable_names_are_refused_and_shown_escaped(tmp_path: Path, name: str, shown: str) -> None:
    """Rows 9, 11, 18: names with control characters or bytes that are not UTF-8."""
    root = make(tmp_path / "ad", {"ok.txt": "x"})
    (root / name).write_text("x")
    listing = list_folder(root)
    assert listing.problems == [f"{shown}: the name is not UTF-8 text or holds control characters"]
    assert printable_name(name) == shown
    assert listing.summary().isprintable()
    assert sorted(listing.files) == ["ok.txt"]


def test_an_unprintable_folder_name_is_refused_once(tmp_path: Path) -> None:
    root = make(tmp_path / "ad", {"bad\ndir/a.txt": "a", "bad\ndir/b.txt": "b"})
    assert list_folder(root).problems == ["bad\\ndir: the name is not UTF-8 text or holds control characters"]


def test_printable_names_are_kept() -> None:
    for name in ("adapter_config.json", "café.txt", "日本語.md", "a b (1).txt", "..evil", "a\\..\\b.txt"):
        assert printable_name(name) == name


def test_summary_lists_twenty_problems_then_counts_the_rest() -> None:
    one = FolderListing(problems=["x: a broken symbolic link"])
    assert one.summary() == "1 entry refused: x: a broken symbolic link"
    many = FolderListing(problems=[f"f{i}: a broken symbolic link" for i in range(MAX_LISTED + 5)])
    text = many.summary()
    assert text.startswith(f"{MAX_LISTED + 5} entries refused: f0: a broken symbolic link; f1: ")
    assert text.endswith(f"f{MAX_LISTED - 1}: a broken symbolic link ... and 5 more")
    assert f"f{MAX_LISTED}:" not in text


def test_a_hugging_face_cache_snapshot_may_link_to_its_blobs(tmp_path: Path) -> None:
    """A snapshot folder's files are links to ``../../blobs/``: inside the repository's cache folder,
    so they are followed; a link out of that cache folder is still refused."""
    repo = tmp_path / "hub" / "models--org--tiny"
    make(repo, {"blobs/aaa": "config", "blobs/bbb": "weights"})
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (snap / "config.json").symlink_to("../../blobs/aaa")
    (snap / "model.safetensors").symlink_to("../../blobs/bbb")
    listing = list_folder(snap)
    assert listing.problems == []
    assert {rel: p.read_text() for rel, p in listing.files.items()} == {
        "config.json": "config",
        "model.safetensors": "weights",
    }
    (snap / "escape").symlink_to("/etc/passwd")
    assert [p.split(":")[0] for p in list_folder(snap).problems] == ["escape"]
    # the same layout anywhere else is an ordinary folder: its links leave it
    plain = tmp_path / "plain" / "snap"
    plain.mkdir(parents=True)
    (plain / "config.json").symlink_to(repo / "blobs" / "aaa")
    assert list_folder(plain).problems[0].startswith("config.json: a symbolic link that leaves the folder")


def test_push_and_base_add_apply_the_same_rule(tmp_path: Path) -> None:
    """Row 4: `base add` refused shards outside the folder while `push` stored them. Both now refuse
    the same entries with the same summary, as their own error type."""
    root = make(tmp_path / "folder", {"config.json": "{}", "adapter_config.json": "{}"})
    (root / "notes.txt").symlink_to("/etc/passwd")
    (root / "loop").symlink_to(".", target_is_directory=True)
    summary = list_folder(root).summary()
    with pytest.raises(InvalidAdapterError) as as_adapter:
        list_files(root)
    with pytest.raises(InvalidModelError) as as_model:
        model_files(root)
    assert as_adapter.value.message == as_model.value.message == f"{root}: {summary}"
    assert summary.startswith("2 entries refused: loop: a symbolic link that loops back")
