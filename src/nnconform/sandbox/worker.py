"""The process beside untrusted proposal code: ``python -m nnconform.sandbox.worker CALL.json``.

It reads the call (entry, parameters, where the inputs are and where outputs go), imports the
proposal's code from the proposal folder (compiling the sources itself: no bytecode cache of the
folder is ever read), loads the inputs as data, calls ``entry(inputs, params)`` and writes what
comes back as data. Its result document ``result.json`` says ``ok`` or carries the error (type,
message, traceback text). The harness trusts none of it beyond its data: the proposal's code runs
in this very process and could write anything here.

Entries: ``"file.py:function"`` (a file of the proposal folder) or ``"package.module:function"``
(an importable module, e.g. a trusted adapter of the harness that imports the proposal itself
through :func:`import_proposal_file`). The function takes ``(inputs: dict, params: dict)`` and
returns a dict whose values are a ``dict[str, torch.Tensor]`` (a safetensors file), ``bytes`` or
plain JSON values.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from . import dataio

RESULT, STARTED = dataio.RESULT, dataio.STARTED


class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    """Compiles the proposal's sources every time: a ``.pyc`` beside them is never read or written."""

    def get_code(self, fullname):
        source = self.get_data(self.path)
        return compile(source, self.path, "exec", dont_inherit=True)


def _source_only_hook(folder: Path):
    def hook(path: str):
        p = Path(path).resolve()
        if p == folder or folder in p.parents:
            return importlib.machinery.FileFinder(path, (_SourceOnlyLoader, importlib.machinery.SOURCE_SUFFIXES))
        raise ImportError("not the proposal folder")
    return hook


def install_proposal_path(folder: str | Path) -> Path:
    """Make ``folder``'s modules importable from source only (its sibling modules import as usual)."""
    folder = Path(folder).resolve()
    sys.path_hooks.insert(0, _source_only_hook(folder))
    sys.path.insert(0, str(folder))
    sys.path_importer_cache.clear()
    return folder


def import_proposal_file(folder: str | Path, rel: str):
    """Import the proposal file ``rel`` of ``folder`` (source only) under a name of its own."""
    folder = install_proposal_path(folder)
    path = folder / rel
    name = "nnconform_proposal_" + "_".join(Path(rel).with_suffix("").parts).replace("-", "_").replace(".", "_")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path, loader=_SourceOnlyLoader(name, str(path)))
    if spec is None or not path.is_file():
        raise ImportError(f"no proposal file {rel!r} in the proposal folder")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def resolve_entry(entry: str, proposal_dir: str | None):
    """The callable an entry names: ``file.py:function`` in the proposal folder or ``module:function``."""
    target, sep, attr = entry.partition(":")
    if not sep or not attr:
        raise ValueError(f"entry {entry!r}: expected 'file.py:function' or 'package.module:function'")
    if target.endswith(".py"):
        if proposal_dir is None:
            raise ValueError(f"entry {entry!r} names a proposal file, but the call has no proposal folder")
        module = import_proposal_file(proposal_dir, target)
    else:
        if proposal_dir is not None:
            install_proposal_path(proposal_dir)
        module = importlib.import_module(target)
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part)
    if not callable(fn):
        raise TypeError(f"entry {entry!r} is a {type(fn).__name__}, not a function")
    return fn


def _load_inputs(in_dir: Path, spec: dict) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for name, (kind, file) in spec.items():
        inputs[name] = (dataio.load_json(in_dir / file) if kind == "json"
                        else dataio.read_value(in_dir, kind, file, f"input {name}"))
    return inputs


def _write_outputs(out_dir: Path, outputs: Any) -> dict:
    if not isinstance(outputs, dict):
        raise TypeError(f"the entry returned a {type(outputs).__name__}; it must return a dict of outputs")
    files, values = {}, {}
    for name, value in outputs.items():
        written = dataio.write_value(out_dir, name, value, f"output {name!r}")
        if written is None:
            values[name] = dataio.check_plain(value, f"output {name!r}")
        else:
            files[name] = list(written)
    return {"files": files, "values": values}


def main(argv: list[str] | None = None) -> int:
    """Run one call described by the JSON file ``argv[0]``; exit 0 with a result, 3 with an error."""
    sys.dont_write_bytecode = True
    call = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    out_dir = Path(call["out_dir"])
    was = out_dir.stat()
    (out_dir / STARTED).write_text("1")
    # the marker must not date the output folder: its times stay the ones the harness left (the proposal's code
    # would otherwise read when its call started from them)
    os.utime(out_dir, ns=(was.st_atime_ns, was.st_mtime_ns))
    try:
        if call.get("threads"):
            import torch

            torch.set_num_threads(int(call["threads"]))
        inputs = _load_inputs(Path(call["in_dir"]), call["inputs"])
        fn = resolve_entry(call["entry"], call.get("proposal_dir"))
        result = _write_outputs(out_dir, fn(inputs, call["params"]))
        document = {"ok": True, **result}
        code = 0
    except BaseException as exc:  # every failure of the proposal's code is reported, never raised
        document = {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)[:4000],
                                           "traceback": "".join(traceback.format_exception(exc))[-16000:]}}
        code = 3
    (out_dir / RESULT).write_text(json.dumps(document, allow_nan=False))
    sys.stdout.flush()
    sys.stderr.flush()
    return code


if __name__ == "__main__":
    # os._exit: the proposal's leftover threads and exit handlers must not keep the call alive
    import os

    os._exit(main())
