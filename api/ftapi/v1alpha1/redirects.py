"""Environment variables that would move a credential: refused in spec.resources.env.

A job's pods hold credentials (the Hub token, S3 keys, tracker tokens, the pod's own
ServiceAccount token). Each client library decides where to send them from its environment:
HF_ENDPOINT moves the Hub token to another host, HTTPS_PROXY every request, SSL_CERT_FILE
whom the client trusts to be that host, AWS_CONTAINER_CREDENTIALS_FULL_URI where botocore
fetches (and sends a token file to) for credentials. A user who may only create FineTuneJobs
must not be able to point them elsewhere, so such variables are refused by the API server (a
CRD rule per group below) and `finetune validate` alike; where a job legitimately needs
another endpoint, a spec field names it and the operator's allow-lists govern it
(ftoperator.policy).

How the list was made, and how it stays complete: tests/unit/repo/test_redirect_inventory.py
reads every environment variable name the trainer image's network clients read (from their
installed source) and fails on any name that looks like an endpoint, a proxy, TLS trust or a
credential source and is neither refused here nor listed there as reviewed with a reason;
and every upper-case word in the image's shared libraries (CUDA, NCCL, cuDNN, torch's C++
side, Triton) that names a library, a plugin, an injection hook, a path or a config file
(fttestkit.env_inventory.loader_names), the same way. A library upgrade that adds such a
variable fails that test until it is classified.

This list is the second line: an operator with `allowedEnv` (or forbidJobCode) admits only
the names it lists (ftoperator.policy), so a name missed here is refused there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class RedirectGroup:
    """Variables of one kind, the spec field (or setting) to use instead, and why."""

    what: str
    """What the variables redirect, for the message."""
    names: tuple[str, ...]
    """Exact variable names."""
    patterns: tuple[str, ...]
    """Whole-name regular expressions (RE2 and Python alike) for families of names."""
    instead: str
    """What to use instead, for the message."""
    families: tuple[str, ...] = ()
    """The patterns as the message says them (AWS_CONTAINER_*)."""

    def refuses(self, name: str) -> bool:
        return name in self.names or any(re.fullmatch(p, name) for p in self.patterns)

    def message(self) -> str:
        listed = [*self.names[:6], *self.families]
        more = ", ..." if len(self.names) > 6 else ""
        return (
            f"env may not set {self.what} ({', '.join(listed)}{more}): a job's credentials "
            f"go only where the platform allows. {self.instead}"
        )


# fmt: off
REDIRECT_GROUPS: tuple[RedirectGroup, ...] = (
    RedirectGroup(
        what="the Hugging Face Hub's endpoint or token source",
        names=(
            "HF_ENDPOINT", "HUGGINGFACE_CO_STAGING", "HF_INFERENCE_ENDPOINT", "HF_TOKEN_PATH",
            "HF_OIDC_RESOURCE", "ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
            "HF_XET_CLIENT_UNIX_SOCKET_PATH", "HF_XET_DATA_DEFAULT_CAS_ENDPOINT",
            "HF_XET_DEFAULT_CAS_ENDPOINT",
        ),
        patterns=(r"FSSPEC_[A-Za-z0-9_]+",),  # fsspec's defaults per protocol (hf://, s3://)
        instead="Use spec.model.hubEndpoint (the operator's allowedHubEndpoints governs it); "
        "the token comes from model.hfTokenSecretRef.",
        families=("FSSPEC_*",),
    ),
    RedirectGroup(
        what="where AWS clients send S3 credentials or fetch them",
        names=(
            "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE", "AWS_CREDENTIAL_FILE", "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
            "AWS_ROLE_SESSION_NAME", "AWS_DATA_PATH", "AWS_LOGIN_CACHE_DIRECTORY", "BOTO_CONFIG",
            "AWS_S3_ENDPOINT_URL", "S3_ENDPOINT", "MLFLOW_S3_ENDPOINT_URL",
        ),
        patterns=(r"AWS_ENDPOINT_URL(_[A-Za-z0-9_]+)?", r"AWS_CONTAINER_[A-Za-z0-9_]+",
                  r"AWS_EC2_METADATA_[A-Za-z0-9_]+", r"AWS_CSM_[A-Za-z0-9_]+"),
        instead="Use spec.output.s3.endpoint (the operator's allowedS3Endpoints governs it) "
        "and output.s3.credentialsSecretRef, or the pod's ServiceAccount "
        "(resources.serviceAccountName).",
        families=("AWS_ENDPOINT_URL*", "AWS_CONTAINER_*", "AWS_EC2_METADATA_*", "AWS_CSM_*"),
    ),
    RedirectGroup(
        what="the trackers' servers or credential sources",
        names=(
            "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_AUTH",
            "MLFLOW_TRACKING_AWS_SIGV4", "MLFLOW_TRACKING_CLIENT_CERT_PATH",
            "MLFLOW_GATEWAY_URI", "MLFLOW_DEPLOYMENTS_TARGET", "MLFLOW_KERBEROS_TICKET_CACHE",
            "KUBE_MLFLOW_TRACKING_URI", "WANDB_BASE_URL", "WANDB_APP_URL",
            "WANDB_IDENTITY_TOKEN_FILE", "WANDB_CREDENTIALS_FILE", "WANDB_CONFIG_DIR",
            "WANDB_SETTINGS_SYSTEM", "DB_MODEL_SERVING_HOST_URL", "DB_DEPENDENCY_OAUTH_CACHE",
            "DB_DEPENDENCY_OAUTH_CACHE_EXPIRY_TS", "SERVING_CREDENTIALS_DIR",
        ),
        patterns=(r"DATABRICKS_[A-Za-z0-9_]+", r"KUBEFLOW_TRAINER_[A-Za-z0-9_]+"),
        instead="Use spec.logging.mlflow.trackingUri or spec.logging.wandb.baseUrl (the "
        "operator's allowedTrackerUrls governs them).",
        families=("DATABRICKS_*", "KUBEFLOW_TRAINER_*"),
    ),
    RedirectGroup(
        what="proxies",
        names=("WANDB_X_PROXIES", "WANDB__PROXIES"),
        patterns=(r"[A-Za-z0-9_.-]*_[Pp][Rr][Oo][Xx][Yy]",),  # any case: urllib's rule
        instead="Proxies are the platform's: the operator's httpProxy, httpsProxy and noProxy "
        "settings give them to every pod.",
        families=("*_PROXY and *_proxy in any case",),
    ),
    RedirectGroup(
        what="whom the clients trust as a server (TLS)",
        names=(
            "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
            "AWS_CA_BUNDLE", "SSLKEYLOGFILE", "PYTHONHTTPSVERIFY", "MLFLOW_TRACKING_INSECURE_TLS",
            "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_S3_IGNORE_TLS",
            "WANDB_INSECURE_DISABLE_SSL", "OPENSSL_CONF", "OPENSSL_MODULES", "OPENSSL_ENGINES",
            "GODEBUG", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", "GRPC_SYSTEM_SSL_ROOTS_DIR",
        ),
        patterns=(),
        instead="The trainer image's CA bundle is the platform's (build it into the image).",
    ),
    RedirectGroup(
        what="the pod's identity or another cloud's credentials",
        names=("KUBECONFIG", "SYSTEM_ACCESSTOKEN", "SYSTEM_TEAMFOUNDATIONCOLLECTIONURI"),
        patterns=(r"KUBERNETES_[A-Za-z0-9_]+", r"AZURE_[A-Za-z0-9_]+", r"GOOGLE_[A-Za-z0-9_]+",
                  r"GCE_METADATA_[A-Za-z0-9_]+", r"CLOUDSDK_[A-Za-z0-9_]+"),
        instead="The pods' identity is their ServiceAccount (resources.serviceAccountName, "
        "which the operator's forbidServiceAccountName governs).",
        families=("KUBERNETES_*", "AZURE_*", "GOOGLE_*", "GCE_METADATA_*", "CLOUDSDK_*"),
    ),
    RedirectGroup(
        what="where credentials and code are loaded from",
        names=(
            "NETRC", "HOME", "XDG_CONFIG_HOME", "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT",
            "GCONV_PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONSTARTUP",
            "PYTHONPYCACHEPREFIX", "BASH_ENV", "HF_MODULES_CACHE", "TRITON_CACHE_DIR",
            "TORCHINDUCTOR_CACHE_DIR", "TORCH_EXTENSIONS_DIR",
            # Programs, libraries, headers and toolchains the trainer runs or compiles
            # against (DeepSpeed's and torch's JIT builds, Triton, Inductor): a path there
            # runs whatever the job downloaded to it (its model or data folder).
            "PATH", "CUDA_HOME", "CUDA_PATH", "CUDA_INC_PATH", "CUDNN_HOME", "CUDNN_PATH",
            "ROCM_HOME", "ROCM_PATH", "HIP_PATH", "NCCL_HOME", "NCCL_EP_HOME",
            "NVSHMEM_LIB_DIR", "ROCSHMEM_LIB_DIR", "NVTOOLSEXT_PATH", "CUTLASS_PATH",
            "LEVEL_ZERO_V1_SDK_PATH", "WINDOWS_CUDA_HOME", "CPATH", "C_INCLUDE_PATH",
            "CPLUS_INCLUDE_PATH", "LIBRARY_PATH", "TRITON_HOME", "TRITON_PTXAS_PATH",
            "TRITON_LIBDEVICE_PATH", "TRITON_HSA_RUNTIME_PATH", "TORCHINDUCTOR_CUTLASS_DIR",
            "TORCHINDUCTOR_CK_DIR", "TORCH_CUSTOM_PYTHONPATH", "TORCHELASTIC_ETCD_BINARY_PATH",
            "CLASSPATH", "NLTK_ALLOW_UNSAFE_CLASSPATH", "WEKAHOME", "MEGATRON_PATH",
            # Where compiled kernels, pickled caches, hub code and config files that name
            # modules are read from (each the default of another: TMPDIR holds Inductor's
            # and Triton's caches, XDG_CACHE_HOME torch's extensions).
            "TMPDIR", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_DATA_DIRS", "XDG_CONFIG_DIRS",
            "XDG_STATE_HOME", "TORCH_HOME", "MPLCONFIGDIR", "FLYDSL_RUNTIME_CACHE_DIR",
            "QUACK_CACHE_DIR", "LM_HARNESS_CACHE_PATH", "DS_ENV_FILE",
            "TORCH_COMPILE_OVERRIDE_INDUCTOR_CONFIGS", "TORCH_COMPILE_OVERRIDE_DYNAMO_CONFIGS",
            # Caches and downloads from a server of the user's choosing.
            "TORCHINDUCTOR_REDIS_HOST", "TORCHINDUCTOR_REDIS_PORT", "TORCHINDUCTOR_REDIS_URL",
            "TORCHINDUCTOR_AUTOGRAD_REMOTE_CACHE", "NLTK_DOWNLOAD_URL",
            "NLTK_ALLOW_PROXIED_URLOPEN",
        ),
        patterns=(),
        instead="A pod reads configuration and code only from the trainer image; put what a "
        "job needs in its spec, or in the image.",
    ),
    RedirectGroup(
        what="libraries, plugins or hooks the compiled runtimes load",
        # CUDA, NCCL, NVSHMEM, cuFile, NVBLAS, Triton's launcher and libhdfs load a shared
        # library, a plugin, a profiler hook or a config file naming one from these.
        names=(
            "CUFILE_ENV_PATH_JSON", "NVSHMEM_CUDA_PATH", "PYTORCH_KERNEL_CACHE_PATH",
            "PERFWORKS_SASS_DISASM_EXECUTABLE_PATH", "LLVM_SYMBOLIZER_PATH", "CUTLASS_HOME",
            "GDRCOPY_HOME", "MPI_HOME", "PMIX_HOME", "SHMEM_HOME", "UCX_HOME", "HADOOP_HOME",
            "JAVA_HOME", "ARROW_HOME", "NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS", "SO_PATH",
            "XL_MODEL_WEIGHTS_PARAM_CONFIG_PATH", "LUA_INIT",
            # What NVRTC, cuDNN's and Triton's kernel compilers read headers and modules from.
            "EDG_MODULES_PATH", "CPPCX_INCLUDE_PATH", "CPPCLI_PORTABLE_ASSEMBLY_PATH",
            "SUBQUADRATIC_OPS_DEBUG_INCLUDE_PATHS", "TRITON_CUPTI_INCLUDE_PATH",
        ),
        patterns=(
            r"[A-Z0-9_]*INJECTION[A-Z0-9_]*_PATH",  # CUDA_/NVTX_/CASK_INJECTION64_PATH
            r"[A-Z0-9_]*PLUGIN[A-Z0-9_]*",  # NCCL_NET/TUNER/PROFILER/ENV_PLUGIN, ...
            r"[A-Z0-9_]*PRELOAD[A-Z0-9_]*",
            r"(?:[A-Z0-9_]*_)?LD_[A-Z0-9_]+",  # LD_PRELOAD, LD_AUDIT, MIC_LD_LIBRARY_PATH
            r"(?:[A-Z0-9_]*_)?LIB[A-Z0-9_]*",  # NCCL_IBVERBS_LIB, NVBLAS_CPU_BLAS_LIB, ...
            r"[A-Z0-9_]*_CONF(?:IG)?_FILE",  # NCCL_CONF_FILE sets any NCCL_* (its plugins)
            r"LUA_C?PATH(?:_[0-9_]+)?",  # lupa's Lua loads modules and C libraries from these
        ),
        instead="The trainer image's runtimes load only the image's own libraries.",
        families=("*INJECTION*_PATH", "*PLUGIN*", "*PRELOAD*", "*LD_*", "*LIB*", "*_CONF_FILE",
                  "*_CONFIG_FILE"),
    ),
)
# fmt: on

# `$(NAME)` in a value copies another variable, the Secret-fed ones included, into this one
# (the kubelet expands it); `$$(` is the escape, kept literal.
VARIABLE_REFERENCE = r"(^|[^$])([$][$])*[$][(]"
REFERENCE_MESSAGE = (
    "env values may not reference other variables ($(NAME) would copy a Secret-fed "
    "credential into a variable that is sent or shown elsewhere): write the value out, or "
    "escape a literal $( as $$("
)


def redirect_group(name: str) -> RedirectGroup | None:
    """The group that refuses `name`, if any."""
    return next((group for group in REDIRECT_GROUPS if group.refuses(name)), None)


def references_variable(value: str | None) -> bool:
    return value is not None and re.search(VARIABLE_REFERENCE, value) is not None
