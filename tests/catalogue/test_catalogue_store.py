"""Object stores: one contract for the folder and S3 backends, plus each backend's own guarantees."""

from __future__ import annotations

import os
import re

import pytest

from catalogue import ObjectNotFoundError, StoreError, open_store
from catalogue.store import CHUNK_SIZE, FileStore, ObjectStore


@pytest.fixture
def store(catalogue_urls) -> ObjectStore:
    return open_store(catalogue_urls.store_url)


def test_put_get_exists_size_list_delete(store):
    assert isinstance(store, ObjectStore)
    store.put("renders/a/b/one.png", b"first", "image/png")
    store.put("renders/a/b/one.png", b"second!", "image/png")  # replace
    store.put("thumbs/a/b/one.webp", b"t", "image/webp")
    assert store.get("renders/a/b/one.png") == b"second!"
    assert store.exists("renders/a/b/one.png") and not store.exists("renders/a/b/two.png")
    assert store.size("renders/a/b/one.png") == 7
    assert b"".join(store.stream("renders/a/b/one.png")) == b"second!"
    assert sorted(store.list()) == ["renders/a/b/one.png", "thumbs/a/b/one.webp"]
    assert list(store.list("thumbs/")) == ["thumbs/a/b/one.webp"]
    store.delete("renders/a/b/one.png")
    store.delete("renders/a/b/one.png")  # deleting twice is fine (sweeps repeat)
    assert not store.exists("renders/a/b/one.png")
    with pytest.raises(ObjectNotFoundError, match=re.escape("renders/a/b/one.png: no such object")):
        store.get("renders/a/b/one.png")
    with pytest.raises(ObjectNotFoundError):
        store.size("renders/a/b/one.png")
    with pytest.raises(ObjectNotFoundError):
        b"".join(store.stream("renders/a/b/one.png"))


def test_stream_yields_a_large_object_in_chunks(store):
    data = os.urandom(2 * CHUNK_SIZE + 123)
    store.put("renders/big.png", data, "image/png")
    chunks = list(store.stream("renders/big.png"))
    assert len(chunks) >= 3 and b"".join(chunks) == data


def test_uri_names_the_backend_and_key(store, catalogue_urls):
    assert store.uri("renders/x.png") == catalogue_urls.store_url.rstrip("/") + "/renders/x.png"


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../up.png", "a/../../up.png", "a//b.png", "a/./b.png",
                                 "a\\b.png", "dir/", "a/.tmp-partial"])
def test_keys_that_could_escape_the_store_are_refused(store, key):
    with pytest.raises(StoreError, match="object key"):
        store.put(key, b"x", "application/octet-stream")


def test_file_store_write_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    store = FileStore(tmp_path / "store")
    store.put("renders/a.png", b"old", "image/png")

    def broken_replace(src, dst):
        raise OSError("disk full during rename")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.put("renders/a.png", b"new", "image/png")
    monkeypatch.undo()
    assert store.get("renders/a.png") == b"old"
    assert [p.name for p in (tmp_path / "store" / "renders").iterdir()] == ["a.png"]


def test_file_store_refuses_a_symlink_out_of_the_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    store = FileStore(tmp_path / "store")
    (tmp_path / "store" / "renders").symlink_to(outside)
    with pytest.raises(StoreError, match="resolves outside the store root"):
        store.put("renders/x.png", b"x", "image/png")


def test_temp_files_of_interrupted_writes_are_not_listed(tmp_path):
    store = FileStore(tmp_path / "store")
    store.put("renders/a.png", b"a", "image/png")
    (tmp_path / "store" / "renders" / ".tmp-abc123").write_bytes(b"half")
    assert list(store.list()) == ["renders/a.png"]


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://host/x", "unsupported scheme 'ftp'"),
    ("file://nas/renders", "file URLs must be local"),
    ("s3:///prefix", "needs a bucket"),
])
def test_bad_store_urls_say_what_is_wrong(url, message):
    with pytest.raises(StoreError, match=message):
        open_store(url)


@pytest.mark.services
def test_s3_store_names_a_missing_bucket(fresh_s3_store_url):
    with pytest.raises(StoreError, match=re.escape("bucket 'no-such-bucket-here' does not exist at http://127.0.0.1:")):
        open_store("s3://no-such-bucket-here/prefix")


@pytest.mark.services
def test_s3_store_reports_wrong_credentials(fresh_s3_store_url, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(StoreError, match="denied; check the AWS credentials"):
        open_store(fresh_s3_store_url)


@pytest.mark.services
def test_s3_objects_sit_under_the_prefix(fresh_s3_store_url, s3_endpoint):
    store = open_store(fresh_s3_store_url)
    store.put("renders/a.png", b"a", "image/png")
    bucket = fresh_s3_store_url.split("/")[2]
    head = s3_endpoint.client().head_object(Bucket=bucket, Key="catalogue/renders/a.png")
    assert head["ContentType"] == "image/png"
