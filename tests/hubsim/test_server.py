"""The real ``huggingface_hub`` client against the emulator: every endpoint lora-hub relies on, and each fault hook.

Expected hashes are computed here from the bytes (``hashlib``) and the git / Git LFS formats, never read back from
the emulator; tree oids are checked against ``git write-tree``.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

from tests.hubsim import HubSim

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO = "alice/adapter"

CARD = b"""---
library_name: peft
base_model: meta-llama/Llama-3.2-1B
base_model_relation: adapter
tags:
- lora
- lora-hub
---
# An adapter

Some text.
"""


def _bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()


def _pointer(data: bytes) -> bytes:
    sha = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()


def _adds(files: dict[str, bytes]) -> list[CommitOperationAdd]:
    return [CommitOperationAdd(path_in_repo=p, path_or_fileobj=d) for p, d in files.items()]


def _tree(folder: str | Path) -> dict[str, bytes]:
    root = Path(folder)
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(root).parts
    }


V1 = {
    "adapter_config.json": b'{"r": 8, "lora_alpha": 16}\n',
    "adapter_model.safetensors": _bytes(40_000, 1),
    "README.md": CARD,
    "sub/notes.txt": b"regular text file\n",
}
V2 = {"adapter_model.safetensors": _bytes(40_000, 2), "sub/notes.txt": b"changed\n"}


@pytest.fixture
def repo_v1_v2(hf_hub: HubSim) -> tuple[HfApi, str, str]:
    """REPO with commit v1 (tagged ``v1``) then v2 on main, made through the client; returns (api, c1, c2)."""
    api = hf_hub.api()
    api.create_repo(REPO)
    c1 = api.create_commit(REPO, operations=_adds(V1), commit_message="v1").oid
    api.create_tag(REPO, tag="v1", revision=c1)
    c2 = api.create_commit(REPO, operations=_adds(V2), commit_message="v2").oid
    return api, c1, c2


def test_create_repo_private_exist_ok_and_namespaces(hf_hub: HubSim) -> None:
    api = hf_hub.api()
    url = api.create_repo(REPO, private=True)
    assert url.repo_id == REPO and url.startswith(hf_hub.url)
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo(REPO)
    assert exc.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    info = api.model_info(REPO)
    assert info.private is True
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]  # the Hub's initial commit
    assert [c.title for c in api.list_repo_commits(REPO)] == ["initial commit"]
    api.create_repo("lora-org/shared")  # an org of alice's
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo("bob/not-alices")
    assert exc.value.response.status_code == 403
    # (a read token with exist_ok gets 403, and the 2.4 client's fallback then builds RepoUrl without the custom
    # endpoint and raises HfUriError: a client quirk, see README.md)
    with pytest.raises(HfHubHTTPError) as exc:
        hf_hub.api(hf_hub.read_token).create_repo("alice/new-one")
    assert exc.value.response.status_code == 403
    api.delete_repo("lora-org/shared")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("lora-org/shared")


def test_commit_regular_and_lfs_files_and_metadata(hf_hub: HubSim, tmp_path: Path) -> None:
    hub = hf_hub
    hub.store.lfs_threshold = 64_000
    api = hub.api()
    api.create_repo(REPO)
    on_disk = tmp_path / "weights.bin"
    on_disk.write_bytes(_bytes(20_000, 8))
    files = {
        **V1,
        "docs/naïve name.txt": "non-ASCII path ✓\n".encode(),
        "big.txt": b"a" * 70_000,  # LFS by size (threshold 64 000)
        "blob.dat": b"\0\1\2binary",  # LFS as binary (NUL byte in the first 512 bytes)
        "sub/deeper/weights.bin": _bytes(3000, 3),  # LFS by .gitattributes pattern
        "sub/deeper.txt": b"git sorts me before the folder sub/deeper\n",
    }
    lfs = {"adapter_model.safetensors", "big.txt", "blob.dat", "sub/deeper/weights.bin", "from_disk.bin"}
    operations = [*_adds(files), CommitOperationAdd("from_disk.bin", on_disk)]  # streamed from a path
    files["from_disk.bin"] = on_disk.read_bytes()
    commit = api.create_commit(REPO, operations=operations, commit_message="upload", commit_description="desc")
    assert commit.commit_url == f"{hub.url}/{REPO}/commit/{commit.oid}"
    assert hub.count(kind="validate-yaml") == 1  # README.md is validated before anything is uploaded
    assert hub.count(kind="lfs-upload", method="PUT", status=200) == len(lfs)
    assert hub.count(kind="lfs-verify", status=200) == len(lfs)
    assert hub.bytes_in(kind="lfs-upload") == sum(len(files[p]) for p in lfs)

    info = api.model_info(REPO, files_metadata=True)
    assert info.sha == commit.oid
    assert info.card_data["base_model"] == "meta-llama/Llama-3.2-1B"
    assert info.card_data["base_model_relation"] == "adapter"
    assert info.card_data["library_name"] == "peft" and info.card_data.tags == ["lora", "lora-hub"]
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {".gitattributes", *files}
    for path, data in files.items():
        s = siblings[path]
        assert s.size == len(data)
        if path in lfs:
            assert s.lfs.sha256 == hashlib.sha256(data).hexdigest()
            assert s.lfs.size == len(data) and s.lfs.pointer_size == len(_pointer(data))
            assert s.blob_id == _git_oid(_pointer(data))
        else:
            assert s.lfs is None and s.blob_id == _git_oid(data)

    infos = api.get_paths_info(REPO, ["adapter_model.safetensors", "sub", "missing.txt", "README.md"], revision="main")
    by_path = {i.path: i for i in infos}
    assert set(by_path) == {"adapter_model.safetensors", "sub", "README.md"}  # a missing path is ignored
    weights = by_path["adapter_model.safetensors"]
    assert isinstance(weights, RepoFile) and weights.lfs.sha256 == hashlib.sha256(files[weights.path]).hexdigest()
    assert by_path["README.md"].lfs is None and by_path["README.md"].blob_id == _git_oid(CARD)
    assert isinstance(by_path["sub"], RepoFolder)

    expanded = api.get_paths_info(REPO, ["big.txt"], expand=True)[0]
    assert expanded.last_commit.oid == commit.oid and expanded.last_commit.title == "upload"

    tree = list(api.list_repo_tree(REPO, recursive=True, revision=commit.oid))
    assert {t.path for t in tree if isinstance(t, RepoFile)} == {".gitattributes", *files}
    assert {t.path for t in tree if isinstance(t, RepoFolder)} == {"docs", "sub", "sub/deeper"}
    listed = sorted(t.path for t in api.list_repo_tree(REPO, path_in_repo="sub"))
    assert listed == ["sub/deeper", "sub/deeper.txt", "sub/notes.txt"]
    assert sorted(api.list_repo_files(REPO)) == sorted([".gitattributes", *files])
    commits = api.list_repo_commits(REPO)
    assert [(c.title, c.message) for c in commits] == [("upload", "desc"), ("initial commit", "")]
    assert commits[0].authors == ["alice"]

    out = snapshot_download(REPO, endpoint=hub.url, local_dir=tmp_path / "snapshot")
    assert {k: v for k, v in _tree(out).items() if k != ".gitattributes"} == files
    _check_tree_oids_with_git(tree, files, lfs, tmp_path / "git")


def _check_tree_oids_with_git(tree: list, files: dict[str, bytes], lfs: set[str], work: Path) -> None:
    """The folder oids the emulator lists are the ones git computes for the same files (LFS files as pointers)."""
    git = shutil.which("git")
    if git is None:
        print("git not installed: tree oids not cross-checked with git write-tree")
        return
    for path, data in files.items():
        if path.startswith("sub/"):
            dest = work / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(_pointer(data) if path in lfs else data)
    env = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "HOME": str(work), "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> str:
        return subprocess.run([git, *args], cwd=work, env=env, check=True, capture_output=True, text=True).stdout

    run("init", "-q")
    run("add", "-A")
    folders = {t.path: t.tree_id for t in tree if isinstance(t, RepoFolder)}
    assert run("write-tree", "--prefix=sub/").strip() == folders["sub"]
    assert run("write-tree", "--prefix=sub/deeper/").strip() == folders["sub/deeper"]


def test_downloads_at_branch_tag_and_sha(hf_hub: HubSim, repo_v1_v2: tuple, tmp_path: Path) -> None:
    api, c1, c2 = repo_v1_v2
    api.create_branch(REPO, branch="dev", revision=c1)
    expected_v1 = {".gitattributes": hf_hub.file_bytes(REPO, ".gitattributes"), **V1}
    expected_v2 = {**expected_v1, **V2}
    cases = {"main": expected_v2, "v1": expected_v1, "dev": expected_v1, c1: expected_v1, c2[:7]: expected_v2}
    for i, (revision, expected) in enumerate(cases.items()):
        out = snapshot_download(REPO, revision=revision, endpoint=hf_hub.url, local_dir=tmp_path / f"s{i}")
        assert _tree(out) == expected, revision
    for revision, commit in {"main": c2, "v1": c1, "refs/tags/v1": c1, c1[:8]: c1, c2: c2}.items():
        assert api.resolve_revision(REPO, revision=revision).resolved == commit
        assert api.model_info(REPO, revision=revision).sha == commit
    path = hf_hub_download(
        REPO, "adapter_model.safetensors", revision="v1", endpoint=hf_hub.url, local_dir=tmp_path / "one"
    )
    assert Path(path).read_bytes() == V1["adapter_model.safetensors"]
    cached = hf_hub_download(REPO, "sub/notes.txt", revision=c2[:10], endpoint=hf_hub.url)  # into the cache
    assert Path(cached).read_bytes() == V2["sub/notes.txt"] and c2 in cached
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")


def test_lfs_object_already_present_is_not_sent_again(hf_hub: HubSim, repo_v1_v2: tuple) -> None:
    api, _, _ = repo_v1_v2
    hf_hub.clear_log()
    api.create_commit(
        REPO, operations=_adds({"copy.safetensors": V2["adapter_model.safetensors"]}), commit_message="same bytes"
    )
    assert hf_hub.count(kind="lfs-batch", status=200) == 1
    assert hf_hub.count(kind="lfs-upload") == 0  # batch answered without actions
    assert hf_hub.commits_made() == 1
    sha = hashlib.sha256(V2["adapter_model.safetensors"]).hexdigest()
    assert api.get_paths_info(REPO, ["copy.safetensors"])[0].lfs.sha256 == sha


def test_branches_tags_refs_and_deletes(hf_hub: HubSim, repo_v1_v2: tuple) -> None:
    api, c1, c2 = repo_v1_v2
    api.create_branch(REPO, branch="lorahub/export")
    api.create_branch(REPO, branch="lorahub/export", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_branch(REPO, branch="lorahub/export")
    assert exc.value.response.status_code == 409
    api.create_tag(REPO, tag="v1", revision=c1, exist_ok=True)
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_tag(REPO, tag="v1", revision=c2)
    assert exc.value.response.status_code == 409
    api.create_tag(REPO, tag="v2", revision=c2[:7], tag_message="second")
    with pytest.raises(RevisionNotFoundError):
        api.create_tag(REPO, tag="v3", revision="deadbeef")
    refs = api.list_repo_refs(REPO)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": c2, "lorahub/export": c2}
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": c1, "v2": c2}
    assert {t.ref for t in refs.tags} == {"refs/tags/v1", "refs/tags/v2"}

    on_branch = api.create_commit(
        REPO, operations=_adds({"x.txt": b"x"}), commit_message="on branch", revision="lorahub/export", parent_commit=c2
    )
    assert api.model_info(REPO, revision="lorahub/export").sha == on_branch.oid
    assert api.model_info(REPO).sha == c2  # main untouched
    assert [c.commit_id for c in api.list_repo_commits(REPO, revision="lorahub/export")][:2] == [on_branch.oid, c2]

    # committing to a missing branch: 404 from preupload (additions) or from the commit endpoint (deletions only)
    with pytest.raises(RevisionNotFoundError):
        api.create_commit(REPO, operations=_adds({"y.txt": b"y"}), commit_message="m", revision="missing")
    assert hf_hub.requests(kind="preupload")[-1].status == 404
    with pytest.raises(RevisionNotFoundError):
        api.create_commit(REPO, operations=[CommitOperationDelete("x.txt")], commit_message="m", revision="missing")
    assert hf_hub.requests(kind="commit")[-1].status == 404

    deleted = api.create_commit(
        REPO,
        operations=[CommitOperationDelete("sub/"), CommitOperationDelete("README.md")],
        commit_message="delete",
        revision="lorahub/export",
    )
    assert sorted(api.list_repo_files(REPO, revision=deleted.oid)) == [
        ".gitattributes",
        "adapter_config.json",
        "adapter_model.safetensors",
        "x.txt",
    ]
    with pytest.raises(EntryNotFoundError):
        api.create_commit(REPO, operations=[CommitOperationDelete("nope.txt")], commit_message="m")

    api.delete_tag(REPO, tag="v2")
    api.delete_branch(REPO, branch="lorahub/export")
    refs = api.list_repo_refs(REPO)
    assert [b.name for b in refs.branches] == ["main"] and [t.name for t in refs.tags] == ["v1"]
    with pytest.raises(RevisionNotFoundError):
        api.delete_tag(REPO, tag="v2")
    with pytest.raises(HfHubHTTPError) as exc:
        api.delete_branch(REPO, branch="main")
    assert exc.value.response.status_code == 403


def test_stale_parent_commit_is_412(hf_hub: HubSim, repo_v1_v2: tuple) -> None:
    api, c1, c2 = repo_v1_v2
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_commit(REPO, operations=_adds({"new.txt": b"n"}), commit_message="late", parent_commit=c1)
    assert exc.value.response.status_code == 412
    assert type(exc.value) is HfHubHTTPError  # no more specific class: callers check the status code
    assert hf_hub.head(REPO) == c2 and "new.txt" not in hf_hub.files(REPO)


def test_concurrent_commit_hook_makes_the_clients_parent_stale(hf_hub: HubSim, repo_v1_v2: tuple) -> None:
    api, _, c2 = repo_v1_v2
    head = api.model_info(REPO).sha  # the client's read
    assert head == c2
    hf_hub.race_next_commit(REPO, {"theirs.txt": b"landed first"})
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_commit(REPO, operations=_adds({"mine.txt": b"mine"}), commit_message="mine", parent_commit=head)
    assert exc.value.response.status_code == 412
    new_head = api.model_info(REPO).sha
    assert new_head != head and "mine.txt" not in hf_hub.files(REPO)
    retried = api.create_commit(
        REPO, operations=_adds({"mine.txt": b"mine"}), commit_message="mine", parent_commit=new_head
    )
    files = hf_hub.files(REPO)
    assert retried.oid == hf_hub.head(REPO) and {"mine.txt", "theirs.txt"} <= set(files)
    assert [c.title for c in api.list_repo_commits(REPO)][:3] == ["mine", "concurrent", "v2"]


def test_unchanged_commit_is_skipped_by_the_client(hf_hub: HubSim, repo_v1_v2: tuple) -> None:
    api, c1, c2 = repo_v1_v2
    before = hf_hub.commit_count(REPO)
    hf_hub.clear_log()
    current = {**V1, **V2}
    # a stale parent_commit is not even checked when nothing changed (the commit endpoint is never called)
    info = api.create_commit(REPO, operations=_adds(current), commit_message="again", parent_commit=c1)
    assert info.oid == c2
    assert hf_hub.count(kind="commit") == 0 and hf_hub.commits_made() == 0
    # the client still asks preupload and the LFS batch API (LFS files are "uploaded" before the no-op filter),
    # but the batch answers without actions, so no byte is sent
    assert hf_hub.count(kind="preupload") == 1 and hf_hub.count(kind="lfs-batch") == 1
    assert hf_hub.count(kind="lfs-upload") == 0
    assert hf_hub.commit_count(REPO) == before


def test_auth_errors_map_to_client_exceptions(hf_hub: HubSim, tmp_path: Path) -> None:
    hf_hub.create_repo("alice/private", private=True)
    hf_hub.commit("alice/private", {"w.safetensors": _bytes(100, 4)})
    hf_hub.create_repo("alice/public")
    anonymous, bob, bogus = hf_hub.api(False), hf_hub.api(hf_hub.other_token), hf_hub.api("hf_not_a_token")
    reader = hf_hub.api(hf_hub.read_token)

    for api, status in ((anonymous, 401), (bob, 404)):
        with pytest.raises(RepositoryNotFoundError) as exc:
            api.model_info("alice/private")
        assert exc.value.response.status_code == status
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("alice/private", "w.safetensors", endpoint=hf_hub.url, token=api.token)
    with pytest.raises(HfHubHTTPError) as exc:
        bogus.model_info("alice/public")
    assert exc.value.response.status_code == 401 and not isinstance(exc.value, RepositoryNotFoundError)
    with pytest.raises(RepositoryNotFoundError) as exc:
        hf_hub.api().model_info("alice/does-not-exist")
    assert exc.value.response.status_code == 404

    assert reader.model_info("alice/private").private is True  # a read token reads
    out = hf_hub_download(
        "alice/private", "w.safetensors", endpoint=hf_hub.url, token=hf_hub.read_token, local_dir=tmp_path
    )
    assert Path(out).read_bytes() == _bytes(100, 4)
    assert anonymous.model_info("alice/public").id == "alice/public"
    for api, status in ((reader, 403), (bob, 403), (anonymous, 401)):
        with pytest.raises(HfHubHTTPError) as exc:
            api.create_commit("alice/public", operations=_adds({"a.txt": b"a"}), commit_message="m")
        assert exc.value.response.status_code == status
    with pytest.raises(HfHubHTTPError) as exc:
        reader.create_branch("alice/public", branch="new", exist_ok=True)
    assert exc.value.response.status_code == 403
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("alice/public", "missing.txt", endpoint=hf_hub.url)
    assert hf_hub.commits_made() == 0


def test_counters_reimport_transfers_nothing(hf_hub: HubSim, repo_v1_v2: tuple, tmp_path: Path) -> None:
    snapshot_download(REPO, revision="v1", endpoint=hf_hub.url, local_dir=tmp_path / "d")
    assert hf_hub.count(kind="resolve", method="GET") == len(V1) + 1
    assert hf_hub.bytes_out(kind="resolve", method="GET") == sum(map(len, V1.values())) + len(
        hf_hub.file_bytes(REPO, ".gitattributes")
    )
    hf_hub.clear_log()
    snapshot_download(REPO, revision="v1", endpoint=hf_hub.url, local_dir=tmp_path / "d")
    assert hf_hub.count(kind="resolve") == 0 and hf_hub.bytes_out(kind="resolve") == 0
    assert hf_hub.count(kind="info") == 1  # only the v1 -> sha resolution
    hf_hub.clear_log()
    hf_hub_download(REPO, "README.md", revision="main", endpoint=hf_hub.url, local_dir=tmp_path / "d")
    assert hf_hub.count(kind="resolve", method="HEAD") == 1 and hf_hub.count(kind="resolve", method="GET") == 0


def test_size_equal_corruption_passes_the_clients_size_check(
    hf_hub: HubSim,
    repo_v1_v2: tuple,
    tmp_path: Path,
) -> None:
    api, _, _ = repo_v1_v2
    good = V2["adapter_model.safetensors"]
    hf_hub.corrupt(REPO, "adapter_model.safetensors")
    advertised = api.get_paths_info(REPO, ["adapter_model.safetensors"])[0]
    assert advertised.lfs.sha256 == hashlib.sha256(good).hexdigest() and advertised.size == len(good)
    got = Path(hf_hub_download(REPO, "adapter_model.safetensors", endpoint=hf_hub.url, local_dir=tmp_path)).read_bytes()
    assert len(got) == len(good) and got != good
    assert hashlib.sha256(got).hexdigest() != advertised.lfs.sha256  # only a re-hash catches it


def test_429_with_retry_after_is_retried_by_the_client(hf_hub: HubSim, repo_v1_v2: tuple) -> None:
    api, _, _ = repo_v1_v2
    hf_hub.fail(2, status=429, retry_after=0, kind="tree")
    files = [f.path for f in api.list_repo_tree(REPO, recursive=True)]
    assert "adapter_model.safetensors" in files
    assert [e.status for e in hf_hub.requests(kind="tree")] == [429, 429, 200]


def test_offline_refuses_connections(hf_hub: HubSim, repo_v1_v2: tuple, tmp_path: Path) -> None:
    api, _, _ = repo_v1_v2
    cached = hf_hub_download(REPO, "adapter_config.json", endpoint=hf_hub.url)
    with hf_hub.offline():
        with pytest.raises(httpx2.ConnectError):
            api.model_info(REPO)
        # the client falls back to its cache for what it has, and says so for what it has not
        assert hf_hub_download(REPO, "adapter_config.json", endpoint=hf_hub.url) == cached
        with pytest.raises(LocalEntryNotFoundError):
            snapshot_download(REPO, endpoint=hf_hub.url, local_dir=tmp_path / "none")
    assert api.model_info(REPO).id == REPO  # same port again


def test_cut_download_is_resumed_with_a_range_request(hf_hub: HubSim, tmp_path: Path) -> None:
    hf_hub.create_repo(REPO)
    chunk = constants.DOWNLOAD_CHUNK_SIZE  # the client writes (and can resume from) whole 10 MiB chunks only
    data = _bytes(chunk + 300_000, 5)
    hf_hub.commit(REPO, {"model.safetensors": data})
    hf_hub.cut_download(after_bytes=chunk + 100_000)
    out = hf_hub_download(REPO, "model.safetensors", endpoint=hf_hub.url, local_dir=tmp_path)
    assert Path(out).read_bytes() == data
    gets = [(e.status, e.range, e.bytes_out) for e in hf_hub.requests(kind="resolve", method="GET")]
    assert gets == [(200, None, chunk + 100_000), (206, f"bytes={chunk}-", 300_000)]


def test_lfs_redirect_to_another_origin_drops_the_token(hf_hub: HubSim, tmp_path: Path) -> None:
    hf_hub.lfs_redirect = True
    hf_hub.create_repo("alice/private", private=True)
    files = {"w.safetensors": _bytes(5000, 6), "config.json": b"{}"}
    hf_hub.commit("alice/private", files)
    out = snapshot_download("alice/private", endpoint=hf_hub.url, token=hf_hub.read_token, local_dir=tmp_path)
    assert {k: v for k, v in _tree(out).items() if k in files} == files
    heads = {e.path.rsplit("/", 1)[-1]: e.status for e in hf_hub.requests(kind="resolve", method="HEAD")}
    assert heads["w.safetensors"] == 302 and heads["config.json"] == 200
    cdn = hf_hub.requests(kind="cdn", method="GET")
    assert len(cdn) == 1 and cdn[0].status == 200 and cdn[0].authenticated is False
    assert {e.path.rsplit("/", 1)[-1] for e in hf_hub.requests(kind="resolve", method="GET")} == {
        "config.json",
        ".gitattributes",
    }


def test_invalid_card_yaml_is_refused_before_any_upload(hf_hub: HubSim) -> None:
    api = hf_hub.api()
    api.create_repo(REPO)
    with pytest.raises(ValueError, match=r"Invalid metadata in README\.md"):
        api.create_commit(REPO, operations=_adds({"README.md": b"---\nbase_model: [oops\n---\n"}), commit_message="m")
    assert hf_hub.count(kind="validate-yaml", status=400) == 1
    assert hf_hub.count(kind="preupload") == 0 and hf_hub.commits_made() == 0


def test_listings_are_paginated(hf_hub: HubSim) -> None:
    hf_hub.page_size = 2
    hf_hub.create_repo(REPO)
    for i in range(3):
        hf_hub.commit(REPO, {f"f{i}.txt": b"%d" % i}, message=f"c{i}")
    api = hf_hub.api()
    assert sorted(api.list_repo_files(REPO)) == [".gitattributes", "f0.txt", "f1.txt", "f2.txt"]
    assert hf_hub.count(kind="tree") == 2
    assert [c.title for c in api.list_repo_commits(REPO)] == ["c2", "c1", "c0", "initial commit"]
    assert hf_hub.count(kind="commits") == 2


def test_command_line_server_prints_its_url(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.hubsim.server", "--port", "0", "--root", str(tmp_path / "root")],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        # plain HTTP, so that this test does not depend on the client's environment isolation
        with httpx2.Client(base_url=url, headers={"Authorization": "Bearer hf_hubsim_alice_write"}) as http:
            assert http.post("/api/repos/create", json={"name": "m", "organization": "alice"}).status_code == 200
            assert http.get("/api/models/alice/m").json()["siblings"] == [{"rfilename": ".gitattributes"}]
            assert http.get("/api/models/alice/nope").headers["X-Error-Code"] == "RepoNotFound"
        stored = tmp_path / "root" / "objects"
        assert any(p.is_file() for p in stored.rglob("*"))  # content lives under --root
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
