"""What `watch` sees of a dataset or of images to classify (finetune.watch): which changes give a new
digest, and which do not. test_reruns shows the same through Snakemake's dry runs."""

import json
import os
import time

import pytest

from finetune.watch import images_state, listed_files_state, tree_state


@pytest.fixture(autouse=True)
def in_a_working_directory_of_its_own(tmp_path, monkeypatch):
    """tree_state keeps its cache in the working directory's .snakemake/, as Snakemake's own files."""
    monkeypatch.chdir(tmp_path)


def make_tree(root):
    (root / "cat").mkdir(parents=True)
    (root / "dog" / "more").mkdir(parents=True)
    for name in ("cat/a.png", "cat/b.png", "dog/c.png", "dog/more/d.png"):
        (root / name).write_bytes(name.encode())
    return root


def overwrite(path, data: bytes):
    folder = path.parent.stat().st_mtime_ns
    time.sleep(0.02)
    path.write_bytes(data)
    assert path.parent.stat().st_mtime_ns == folder  # the folder's own state is as before


def test_folders_see_a_file_added_or_removed_but_not_one_overwritten_in_place(tmp_path):
    root = make_tree(tmp_path / "images")
    before = tree_state(root)
    overwrite(root / "cat/a.png", b"other pixels")
    assert tree_state(root) == before
    (root / "dog/more/e.png").write_bytes(b"new")
    assert tree_state(root) != before


def test_folders_see_an_image_renamed_or_replaced_but_not_files_no_job_reads(tmp_path):
    """A Finder's .DS_Store, a notes file, or an image added and deleted again changes every folder's
    modification time but nothing a split or predict reads: the same digest, so nothing retrains."""
    root = make_tree(tmp_path / "images")
    before = tree_state(root)
    (root / "cat" / ".DS_Store").write_bytes(b"finder")
    (root / "dog" / "more" / "notes.txt").write_text("shot on tuesday")
    (root / "dog" / "new.png").write_bytes(b"new")
    (root / "dog" / "new.png").unlink()
    assert os.stat(root / "cat").st_mtime_ns != 0 and tree_state(root) == before
    (root / "cat" / "a.png").rename(root / "cat" / "z.png")
    renamed = tree_state(root)
    assert renamed != before
    (root / "cat" / "z.png").rename(root / "cat" / "a.png")
    assert tree_state(root) == before  # renamed back: the same files
    (tmp_path / "fixed.png").write_bytes(b"fixed pixels")
    os.replace(tmp_path / "fixed.png", root / "dog" / "c.png")  # `mv fixed.png dog/c.png`: another file, same name
    assert tree_state(root) not in (before, renamed)
    (root / "dog" / "Other.JPG").write_bytes(b"an image by its extension, whatever its case")
    assert tree_state(root) not in (before, renamed)


def test_files_see_an_image_overwritten_in_place_or_touched_deep_in_the_tree(tmp_path):
    root = make_tree(tmp_path / "images")
    states = [tree_state(root, "files")]
    overwrite(root / "dog/more/d.png", b"other pixels")
    states.append(tree_state(root, "files"))
    time.sleep(0.02)
    os.utime(root / "cat/b.png")
    states.append(tree_state(root, "files"))
    assert len(set(states)) == 3
    assert tree_state(root, "files") == states[-1]  # the same tree, the same digest


def test_hidden_files_are_not_watched_as_they_are_not_read(tmp_path):
    root = make_tree(tmp_path / "images")
    (root / "cat" / ".DS_Store").write_bytes(b"finder")
    (root / "cat" / "notes.txt").write_bytes(b"notes")
    before = tree_state(root, "files")
    overwrite(root / "cat" / ".DS_Store", b"finder, later")
    overwrite(root / "cat" / "notes.txt", b"not an image either")
    assert tree_state(root, "files") == before


def test_a_list_watches_the_files_it_names_and_only_with_files(tmp_path):
    root = make_tree(tmp_path / "images")
    listing = root / "list.csv"
    listing.write_text("path\ncat/a.png\n" + f"{root / 'dog/c.png'}\n")  # relative to the list, and absolute
    before = listed_files_state(listing, "files")
    overwrite(root / "cat/b.png", b"not listed")
    assert listed_files_state(listing, "files") == before
    overwrite(root / "dog/c.png", b"listed, by its absolute path")
    after = listed_files_state(listing, "files")
    assert after != before
    (root / "cat/a.png").unlink()
    assert listed_files_state(listing, "files") not in (before, after)
    assert listed_files_state(listing, "folders") == ""  # the list's text is the rule's input
    assert images_state(listing, "files") == listed_files_state(listing, "files")
    assert images_state(root, "files") == tree_state(root, "files")
    # a path written with spaces around it (`cat/b.png , cat`) names the file without them, as the split reads it
    spaced = root / "spaced.csv"
    spaced.write_text("path,label\n cat/b.png , cat\n")
    before = listed_files_state(spaced, "files")
    overwrite(root / "cat/b.png", b"listed, between spaces")
    assert listed_files_state(spaced, "files") != before
    # a row without a path names no file (predict skips it), not the list's folder: a file made there is no change
    blank = root / "blank.csv"
    blank.write_text("note,path\na,cat/a.png\nb,\n")
    before = listed_files_state(blank, "files")
    (root / "unrelated.txt").write_text("made beside the list")
    assert listed_files_state(blank, "files") == before


def test_nothing_to_watch_leaves_the_message_to_the_job(tmp_path):
    assert tree_state(tmp_path / "missing", "files") == ""
    assert listed_files_state(tmp_path / "missing.csv", "files") == ""
    (tmp_path / "no_path.csv").write_text("file\na.png\n")
    assert listed_files_state(tmp_path / "no_path.csv", "files") == ""


def test_a_symlinked_folder_is_watched_as_the_split_reads_it_and_a_loop_ends(tmp_path):
    """The split follows symlinked folders (a symlink farm is a common subset): so does the digest; a link back
    up the tree is walked once, as the split walks it."""
    root = make_tree(tmp_path / "images")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.png").write_bytes(b"x")
    (root / "cat" / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "dog" / "loop").symlink_to(root, target_is_directory=True)
    before = tree_state(root)
    (elsewhere / "y.png").write_bytes(b"y")  # an image added where the link points
    assert tree_state(root) != before
    from finetune.images import files_below

    assert str(root / "cat" / "linked" / "y.png") in {str(p) for p in files_below(root)}  # the split reads it too


def test_fashion_mnist_s_files_are_watched_with_files(tmp_path):
    """Its IDX files are no image files by extension: with watch files each is watched all the same."""
    from finetune.watch import dataset_state

    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes(b"idx")
    dataset = {"format": "fashion-mnist", "path": str(folder)}
    assert dataset_state({**dataset, "watch": "folders"}) == ""  # used as published
    before = dataset_state({**dataset, "watch": "files"})
    overwrite(folder / "train-images-idx3-ubyte.gz", b"other images")
    assert dataset_state({**dataset, "watch": "files"}) != before


def test_an_image_deleted_and_written_again_under_its_name_is_seen_even_where_its_inode_is_reused(tmp_path):
    """rm + cp (a script exporting a class folder again, a checkout): the folder changes, so its images are looked
    at, and the new file's size and time differ. (A digest of names and inode numbers missed it where the file
    system gave the new file the freed inode, as ext4 does.)"""
    root = make_tree(tmp_path / "images")
    before = tree_state(root)
    inode = os.stat(root / "cat" / "a.png").st_ino
    time.sleep(0.02)
    (root / "cat" / "a.png").unlink()
    (root / "cat" / "a.png").write_bytes(b"pixels exported again")
    print("inode reused:", os.stat(root / "cat" / "a.png").st_ino == inode)
    assert tree_state(root) != before


def test_the_cache_spares_looking_at_unchanged_folders_and_both_depths_agree(tmp_path):
    """watch folders takes an unchanged folder's files from the cache (so an image overwritten in place is not seen
    there, as documented), files looks at every file; where nothing was overwritten in place both give the same
    digest, so switching rerun nothing; without a cache every folder is looked at."""
    root = make_tree(tmp_path / "images")
    first = tree_state(root)
    assert tree_state(root, "files") == first == tree_state(root, cache=None)
    overwrite(root / "dog" / "c.png", b"other pixels, written in place")
    assert tree_state(root) == first  # the folder did not change: its files' states come from the cache
    assert tree_state(root, "files") != first  # looked at: seen, and the cache refreshed
    assert tree_state(root) == tree_state(root, "files") == tree_state(root, cache=None)


def test_looking_with_files_keeps_the_cache_of_the_other_trees(tmp_path):
    """The dataset and the images to classify share the cache: a look at one with files dropped the other's entries
    (its folders then all looked at afresh by the next start)."""
    from finetune.watch import CACHE

    data, other = make_tree(tmp_path / "images"), make_tree(tmp_path / "to_classify")
    tree_state(data), tree_state(other)
    overwrite(data / "cat" / "a.png", b"other pixels, written in place")
    tree_state(data, "files")
    assert str(other.resolve()) in json.loads(CACHE.read_text()), "the other tree's entries went"


@pytest.mark.parametrize("text", ['{"x": 1}', '[1, 2]', '{"/a": [1]}', "{not json", ""])
def test_a_damaged_cache_is_looked_past_and_written_again(tmp_path, text):
    """The cache is Snakemake's working state, not the user's: damaged or edited, its entries of another shape are
    left out (those folders looked at afresh, the digest as without a cache) and the cache is written whole."""
    from finetune.watch import CACHE

    root = make_tree(tmp_path / "images")
    expected = tree_state(root, cache=None)
    CACHE.parent.mkdir(exist_ok=True)
    CACHE.write_text(text.replace("/a", str(root.resolve())))
    assert tree_state(root) == expected
    assert len(json.loads(CACHE.read_text())) == 4  # images, cat, dog, dog/more
    assert tree_state(root) == expected


def test_what_a_class_folder_left_out_by_dataset_classes_holds_changes_nothing(tmp_path):
    """An image added to a class `dataset.classes` leaves out (or a folder made in it) gave the split a new param and
    retrained every run, though the split never reads it. Such a folder counts by its path alone; a chosen class's
    images, a folder added beside the classes (a class by index may move) and classes given by index still count."""
    from finetune.watch import dataset_state

    root = make_tree(tmp_path / "images")
    (root / "owl").mkdir()
    (root / "owl" / "o.png").write_bytes(b"owl")
    dataset = {"format": "imagefolder", "path": str(root), "classes": ["cat", "dog"]}
    before = dataset_state(dataset)
    assert before == tree_state(root, classes=["cat", "dog"]) and before
    (root / "owl" / "p.png").write_bytes(b"another owl")
    (root / "owl" / "nested").mkdir()
    (root / "owl" / "nested" / "q.png").write_bytes(b"deeper")
    assert dataset_state(dataset) == before
    everything = tree_state(root)
    assert dataset_state({**dataset, "classes": None}) == everything != before  # no classes: every folder is one
    assert dataset_state({**dataset, "classes": [0, 1]}) == everything  # by index: which folders depends on all
    assert dataset_state({**dataset, "classes": ["cat", 1]}) == everything  # one index among names: the same
    (root / "dog" / "more" / "e.png").write_bytes(b"a chosen class's image")
    assert dataset_state(dataset) != before
    before = dataset_state(dataset)
    (root / "emu").mkdir()
    assert dataset_state(dataset) != before
    # a root already split: <root>/<split>/<class>; the split folders are no classes to leave out
    split = tmp_path / "split"
    for name in ("train/cat/a.png", "train/owl/o.png", "val/cat/b.png"):
        (split / name).parent.mkdir(parents=True, exist_ok=True)
        (split / name).write_bytes(name.encode())
    before = tree_state(split, classes=["cat"])
    (split / "train" / "owl" / "p.png").write_bytes(b"owl")
    assert tree_state(split, classes=["cat"]) == before
    (split / "val" / "cat" / "c.png").write_bytes(b"cat")
    assert tree_state(split, classes=["cat"]) != before
    # a chosen class that is a link into a folder left out, which is walked first (sorted): the split reads it
    linked = tmp_path / "linked"
    (linked / "birds" / "owl").mkdir(parents=True)
    (linked / "cat").mkdir()
    (linked / "birds" / "owl" / "o1.png").write_bytes(b"owl")
    (linked / "cat" / "c1.png").write_bytes(b"cat")
    (linked / "owl").symlink_to(linked / "birds" / "owl", target_is_directory=True)
    before = tree_state(linked, classes=["cat", "owl"])
    (linked / "birds" / "owl" / "o2.png").write_bytes(b"another owl")
    assert tree_state(linked, classes=["cat", "owl"]) != before


def test_two_folders_swapped_with_the_same_modification_time_are_seen(tmp_path):
    """`mv cat tmp; mv dog cat; mv tmp dog` where both folders have the same time (as an archive unpacked, `cp -a`,
    `rsync -a` leave them): each path's folder time was as before, so the cache gave each path the other class's
    files and nothing reran. A folder's inode counts beside its time."""
    root = tmp_path / "images"
    for name, count in (("cat", 2), ("dog", 3)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{i}.png").write_bytes(f"{name}{i}".encode())
        os.utime(root / name, ns=(10**18, 10**18))
    before = tree_state(root)
    (root / "cat").rename(root / "tmp")
    (root / "dog").rename(root / "cat")
    (root / "tmp").rename(root / "dog")
    assert os.stat(root / "cat").st_mtime_ns == os.stat(root / "dog").st_mtime_ns
    assert tree_state(root) != before
    assert tree_state(root) == tree_state(root, "files")  # as every file looked at


def test_a_linked_file_s_target_replaced_or_gone_is_seen_though_its_folder_did_not_change(tmp_path):
    """`cat/l.png -> ../bird/0.png`, bird a class left out (not walked since 2026-12-01) or a folder outside the root:
    its target replaced or deleted changes no folder the watch looks at. A link is looked at each time."""
    root = tmp_path / "images"
    for name in ("cat", "dog", "bird"):
        (root / name).mkdir(parents=True)
        (root / name / "0.png").write_bytes(name.encode())
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.png").write_bytes(b"outside")
    (root / "cat" / "l.png").symlink_to(root / "bird" / "0.png")
    (root / "dog" / "x.png").symlink_to(tmp_path / "elsewhere" / "x.png")
    classes = ["cat", "dog"]
    before = tree_state(root, classes=classes)
    assert tree_state(root, classes=classes) == before  # the cache in use: the same
    (tmp_path / "new.png").write_bytes(b"another bird, a longer one")
    os.replace(tmp_path / "new.png", root / "bird" / "0.png")
    replaced = tree_state(root, classes=classes)
    assert replaced != before and replaced == tree_state(root, "files", classes=classes)
    (root / "bird" / "0.png").unlink()
    assert tree_state(root, classes=classes) not in (before, replaced)
    gone = tree_state(root, classes=classes)
    (tmp_path / "elsewhere" / "x.png").write_bytes(b"outside, edited to another size")
    assert tree_state(root, classes=classes) != gone


def test_a_class_folder_left_out_and_named_like_a_split_is_watched_by_its_name_alone(tmp_path):
    """`test/` beside the class folders holding images only (unlabelled photos kept next to the classes): a class to
    the split, as a split folder holds class folders; left out by dataset.classes, an image added there still
    retrained every run. Once it holds a folder it may be a split folder: then it counts again."""
    root = make_tree(tmp_path / "images")
    (root / "test").mkdir()
    (root / "test" / "t.png").write_bytes(b"unlabelled")
    before = tree_state(root, classes=["cat", "dog"])
    (root / "test" / "u.png").write_bytes(b"another")
    assert tree_state(root, classes=["cat", "dog"]) == before
    assert tree_state(root, classes=["cat", "dog", "test"]) != before  # chosen: read
    (root / "test" / "cat").mkdir()
    assert tree_state(root, classes=["cat", "dog"]) != before


def test_an_image_in_an_imagefolder_s_root_changes_nothing_the_split_reads(tmp_path):
    """An image saved in the root itself is in no class, and the split reads none there: it reran the split and so
    every job after it, for the same split. The dataset's digest is that of a root holding none (a tree without such
    images keeps the digest it had, so no earlier split runs again); predict reads a folder's own images: they count
    there, and in a class folder."""
    from finetune.watch import dataset_state

    root = make_tree(tmp_path / "images")
    dataset = {"format": "imagefolder", "path": str(root)}
    before = dataset_state(dataset)
    assert before == tree_state(root) == images_state(root)  # nothing in the root: as every tree was watched before
    (root / "stray.png").write_bytes(b"a photo dropped beside the class folders")
    (root / "notes.txt").write_text("and a note")
    assert dataset_state(dataset) == before and dataset_state({**dataset, "watch": "files"}) == before
    (root / "stray.png").unlink()
    chosen = dataset_state({**dataset, "classes": ["cat"]})
    (root / "stray.png").write_bytes(b"a photo dropped beside the class folders")
    assert dataset_state({**dataset, "classes": ["cat"]}) == chosen  # with dataset.classes too
    assert images_state(root) != before  # predict classifies it
    (root / "stray.png").rename(root / "cat" / "stray.png")
    assert dataset_state(dataset) != before
