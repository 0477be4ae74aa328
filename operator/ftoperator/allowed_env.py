"""The environment a job may set when the platform allow-lists it (`allowedEnv`).

The API server's rules refuse the variables known to move a credential or load code
(ftapi.v1alpha1.redirects), a deny-list built by reading the libraries; the next release
of CUDA, NCCL or a client library can read a name it misses. An operator with
`restrictEnv` (or `forbidJobCode`, which implies it) admits in `spec.resources.env` only
the names `allowedEnv` lists, so a name nobody has classified is refused by default.

The default list holds the knobs users set to tune or debug a run, each a number, a level,
a mode, an interface or a name: the allocator, NCCL's and torch.distributed's debug levels,
transports and network interfaces, thread counts, tokenizer parallelism, library verbosity,
the trackers' project and run names. Nothing in it names a path, a library, a plugin, a
host or a credential source (NCCL_DEBUG_FILE, NCCL_TOPO_FILE and every *_PLUGIN are left
out). Entries are exact names or shell globs (policy.globbed, case-sensitive).
"""

from __future__ import annotations

# fmt: off
DEFAULT_ALLOWED_ENV: tuple[str, ...] = (
    # PyTorch's allocator, kernels and debugging.
    "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF",
    "PYTORCH_NO_CUDA_MEMORY_CACHING", "CUDA_LAUNCH_BLOCKING", "CUDA_DEVICE_MAX_CONNECTIONS",
    "CUDA_MODULE_LOADING", "CUBLAS_WORKSPACE_CONFIG", "NVIDIA_TF32_OVERRIDE",
    "TORCH_CUDNN_V8_API_LRU_CACHE_LIMIT", "TORCH_SHOW_CPP_STACKTRACES", "TORCH_CPP_LOG_LEVEL",
    "TORCH_LOGS", "TORCH_DISTRIBUTED_DEBUG", "TORCH_NCCL_ASYNC_ERROR_HANDLING",
    "TORCH_NCCL_BLOCKING_WAIT", "TORCH_NCCL_TRACE_BUFFER_SIZE", "TORCH_NCCL_DUMP_ON_TIMEOUT",
    "TORCH_NCCL_ENABLE_MONITORING", "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC",
    "TORCH_NCCL_AVOID_RECORD_STREAMS", "TORCH_NCCL_HIGH_PRIORITY",
    # NCCL: debug levels, transports, interfaces, algorithms, sizes.
    "NCCL_DEBUG", "NCCL_DEBUG_SUBSYS", "NCCL_SOCKET_IFNAME", "NCCL_SOCKET_FAMILY",
    "NCCL_SOCKET_NTHREADS", "NCCL_NSOCKS_PERTHREAD", "NCCL_IB_DISABLE", "NCCL_IB_HCA",
    "NCCL_IB_GID_INDEX", "NCCL_IB_TC", "NCCL_IB_SL", "NCCL_IB_TIMEOUT", "NCCL_IB_RETRY_CNT",
    "NCCL_IB_QPS_PER_CONNECTION", "NCCL_IB_SPLIT_DATA_ON_QPS", "NCCL_IB_ADAPTIVE_ROUTING",
    "NCCL_NET_GDR_LEVEL", "NCCL_NET_GDR_READ", "NCCL_P2P_DISABLE", "NCCL_P2P_LEVEL",
    "NCCL_SHM_DISABLE", "NCCL_NVLS_ENABLE", "NCCL_CUMEM_ENABLE", "NCCL_CROSS_NIC",
    "NCCL_ALGO", "NCCL_PROTO", "NCCL_MIN_NCHANNELS", "NCCL_MAX_NCHANNELS", "NCCL_BUFFSIZE",
    "NCCL_NTHREADS", "NCCL_LAUNCH_MODE", "NCCL_ASYNC_ERROR_HANDLING", "NCCL_BLOCKING_WAIT",
    "NCCL_TIMEOUT",
    # Thread counts and parallelism.
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_MAX_THREADS",
    "NUMEXPR_NUM_THREADS", "RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM",
    # Library verbosity, progress bars, timeouts.
    "TRANSFORMERS_VERBOSITY", "TRANSFORMERS_NO_ADVISORY_WARNINGS", "DATASETS_VERBOSITY",
    "HF_HUB_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS",
    "HF_HUB_DISABLE_TELEMETRY", "HF_HUB_DOWNLOAD_TIMEOUT", "HF_HUB_ETAG_TIMEOUT",
    "HF_HUB_DISABLE_SYMLINKS_WARNING", "ACCELERATE_LOG_LEVEL", "DS_LOG_LEVEL", "TQDM_DISABLE",
    "PYTHONUNBUFFERED", "PYTHONFAULTHANDLER", "PYTHONHASHSEED",
    # The trackers' names for a run (their servers and tokens are spec fields).
    "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP", "WANDB_JOB_TYPE", "WANDB_NAME",
    "WANDB_NOTES", "WANDB_TAGS", "WANDB_MODE", "WANDB_SILENT", "WANDB_CONSOLE",
    "WANDB_LOG_MODEL", "WANDB_WATCH", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID",
    "MLFLOW_NESTED_RUN", "MLFLOW_TAGS", "MLFLOW_FLATTEN_PARAMS",
)
# fmt: on
