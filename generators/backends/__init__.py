from .base import Backend, BackendConfig, backend_names, load_backend, register_backend

__all__ = ["Backend", "BackendConfig", "backend_names", "load_backend", "register_backend"]
