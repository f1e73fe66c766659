"""Class data sharing options of the JVM start (pyengine/jvm.py): used only when the archive
beside the jar is there and newer than the jar; MATCHX_CDS=0 turns it off. (That a member
starts and serves with and without the archive is what every integration test does: `make
build` writes it, a checkout without it runs without it.)"""

import os

import pytest

from pyengine import jvm


@pytest.fixture
def jar(tmp_path, monkeypatch):
    monkeypatch.delenv("MATCHX_CDS", raising=False)
    path = tmp_path / "matchx-cluster.jar"
    path.write_bytes(b"jar")
    return path


def test_no_archive_no_option(jar):
    assert jvm.cds_options(jar) == ()


@pytest.mark.parametrize("older", ["jar", "archive"])
def test_only_an_archive_newer_than_the_jar_is_used(jar, monkeypatch, older):
    # one older than the jar was made before a rebuild: the JVM would refuse it anyway
    jsa = jvm.cds_archive(jar)
    jsa.write_bytes(b"archive")
    os.utime(jar if older == "jar" else jsa, (1_000_000, 1_000_000))
    want = (f"-XX:SharedArchiveFile={jsa}", "-Xshare:auto") if older == "jar" else ()
    assert jvm.cds_options(jar) == want
    monkeypatch.setenv("MATCHX_CDS", "0")
    assert jvm.cds_options(jar) == ()
