"""omni: a streaming, real-time assistant (see README.md). Every part lives under this one namespace, so no
top-level name of ours can shadow a dependency's (transformers imports a `kernels` package, for one)."""
