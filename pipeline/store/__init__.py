"""The HDF5 feature store (contract in docs/FORMAT.md): atomic parts, atomic commits, checked reads.

A store is a small root file (``features.h5``) naming immutable shard, index and links files
in its directory (``features.h5.d/``). Writers stage each finished video as a part file and
:meth:`StoreBuilder.commit` publishes them as a new generation; readers only ever see a
complete store. This package's modules, one concept each:

* :mod:`~pipeline.store.layout`: file names, format markers, write errors;
* :mod:`~pipeline.store.write`: part files, the writer's lock, the commit;
* :mod:`~pipeline.store.commit`: the commit's steps (read staging, merge, link shards);
* :mod:`~pipeline.store.generations`: the root file and publishing a generation;
* :mod:`~pipeline.store.index`: index files (catalog, path index, failures);
* :mod:`~pipeline.store.links`: ``/videos/<id>`` external links for plain h5py readers;
* :mod:`~pipeline.store.read`: reading a committed store;
* :mod:`~pipeline.store.maintenance`: ``compact`` and ``migrate``;
* :mod:`~pipeline.store.tools`: ``info`` and ``verify``;
* :mod:`~pipeline.store.export`: per-video NumPy files for other tools.

Import from here; the submodules are the implementation.
"""

from pipeline.store.commit import CommitSummary, staged_config
from pipeline.store.export import ExportOptions, ExportSummary, export_store
from pipeline.store.layout import parts_dir_for, shards_dir_for
from pipeline.store.maintenance import MaintenanceSummary, compact, migrate
from pipeline.store.read import (
    FeatureStore,
    indexed_video_id,
    known_failure,
    open_store,
    read_store_config,
    unchanged,
)
from pipeline.store.tools import VerifyReport, store_info, verify_store
from pipeline.store.write import (
    WEIGHTS_SUFFIX,
    StoreBuilder,
    backbone_sidecar,
    staged_video_ids,
    staged_video_infos,
    write_alias,
    write_failure,
    write_part,
)

__all__ = [
    "WEIGHTS_SUFFIX",
    "CommitSummary",
    "ExportOptions",
    "ExportSummary",
    "FeatureStore",
    "MaintenanceSummary",
    "StoreBuilder",
    "VerifyReport",
    "backbone_sidecar",
    "compact",
    "export_store",
    "indexed_video_id",
    "known_failure",
    "migrate",
    "open_store",
    "parts_dir_for",
    "read_store_config",
    "shards_dir_for",
    "staged_config",
    "staged_video_ids",
    "staged_video_infos",
    "store_info",
    "unchanged",
    "verify_store",
    "write_alias",
    "write_failure",
    "write_part",
]
