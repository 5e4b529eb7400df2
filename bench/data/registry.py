"""The dataset registry: one spec string names any dataset a run can use.

    sklearn:digits           scikit-learn's bundled 8×8 digits            (bench.data.digits)
    builtin:text             byte-level corpus of Python's stdlib sources (bench.data.text)
    hf:<dataset>             datasets.load_dataset(<dataset>, config)     (bench.data.hub)
    path/to/file.parquet     a local .parquet/.arrow/.csv/.json/.jsonl    (bench.data.hub)
    module.path:function     a plug-in: factory(seed, **dataset_args) -> DataBundle, imported
    | <name>                 or an entry point of specbench.datasets      (bench.plugins)

Each loader module declares ``ALLOWED_ARGS`` (name → description), ``check_name``,
``validate_args`` and ``load``; a loader that tokenizes text (``TOKENIZES = True``) also takes
the trial's token cache (`bench.data.cache`). This module dispatches, and specs are parsed by
`bench.plugins.SpecResolver`, shared with the model registry. Loader modules are imported on
first use and import their heavy libraries lazily, so config validation (`check_spec`,
`check_args`) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.data.task import DataBundle
from bench.plugins import Kind, PluginFactory, SpecResolver
from bench.problems import shown

if TYPE_CHECKING:
    from bench.data.cache import TokenCache

#: scheme → loader module.
SCHEMES: dict[str, str] = {
    "sklearn": "bench.data.digits",
    "builtin": "bench.data.text",
    "hf": "bench.data.hub",
}


def _is_local_file(spec: str) -> bool:
    from bench.data.hub import local_builder

    return local_builder(spec) is not None


RESOLVER = SpecResolver(Kind(
    name="dataset", schemes=SCHEMES,
    first="the seed (int)", returns=DataBundle, returns_what="a bench.data.DataBundle", classes_allowed=False,
    usage="use sklearn:digits, builtin:text, hf:<name>, a local .parquet/.arrow/.csv/.json/.jsonl path, "
          "or a plug-in: module.path:function or an entry-point name",
), local=_is_local_file, local_module="bench.data.hub")


def check_spec(spec: str) -> str | None:
    """An error message naming the problem with ``spec``, or None if it can be loaded.

    Cheap: nothing is downloaded or read beyond a file-existence check and importing a plug-in's
    module.
    """
    parsed = RESOLVER.parse(spec)
    if isinstance(parsed, str):
        return parsed
    if isinstance(parsed, PluginFactory):
        return None  # loaded and of the right kind
    scheme, name = parsed
    module = RESOLVER.module(scheme)
    problem = module.check_local(name) if scheme == "local" else module.check_name(name)
    return None if problem is None else f"dataset {shown(spec)}: {problem}"


def allowed_args(spec: str) -> dict[str, str]:
    """The arguments the loader of ``spec`` accepts (name → description); empty for a bad spec."""
    parsed = RESOLVER.parse(spec)
    if isinstance(parsed, str):
        return {}
    if isinstance(parsed, PluginFactory):
        return parsed.allowed_args()
    scheme, _ = parsed
    module = RESOLVER.module(scheme)
    return dict(module.FILE_ARGS if scheme == "local" else module.ALLOWED_ARGS)


def check_args(spec: str, args: dict[str, Any]) -> list[str]:
    """Problems with ``args`` for ``spec``: unknown names (with a suggestion) and bad values."""
    return RESOLVER.args_problems(spec, args, check_spec(spec), allowed_args,
                                  lambda scheme, _name, a: RESOLVER.module(scheme).validate_args(a))


def load_dataset(spec: str, args: dict[str, Any] | None = None, seed: int = 0,
                 cache: TokenCache | None = None) -> DataBundle:
    """Load ``spec`` with loader ``args``; held-out splits are drawn from ``seed``. A text corpus
    is tokenized once into ``cache`` and memory-mapped from it (None: tokenized in memory);
    plug-ins and image datasets ignore it.

    Raises ValueError with every problem found by `check_spec` / `check_args` before loading.
    """
    args = dict(args or {})
    parsed = RESOLVER.parse_valid(spec, check_args(spec, args))
    if isinstance(parsed, PluginFactory):
        return parsed.build(seed, args)
    scheme, name = parsed  # type: ignore[misc]
    module = RESOLVER.module(scheme)
    extra = {"cache": cache} if getattr(module, "TOKENIZES", False) else {}
    return _load(module, scheme, name, args, seed, **extra)  # type: ignore[return-value]


def _load(module: Any, scheme: str, name: str, args: dict[str, Any], seed: int, **kwargs: Any) -> DataBundle | None:
    return (module.load_local if scheme == "local" else module.load)(name, args, seed, **kwargs)


def prepare_tokens(spec: str, args: dict[str, Any] | None, cache: TokenCache) -> str | None:
    """Build (or find) the token-cache entry of a text corpus, as a trial would, without preparing
    anything else; returns its key, or None when ``spec`` is not a tokenized corpus (images,
    plug-ins). Raises ValueError like `load_dataset`."""
    args = dict(args or {})
    parsed = RESOLVER.parse_valid(spec, check_args(spec, args))
    if isinstance(parsed, PluginFactory):
        return None
    scheme, name = parsed  # type: ignore[misc]
    module = RESOLVER.module(scheme)
    if not getattr(module, "TOKENIZES", False):
        return None
    extra = {"text_only": True} if scheme != "builtin" else {}
    bundle = _load(module, scheme, name, args, 0, cache=cache, **extra)
    return None if bundle is None else bundle.cache_key
