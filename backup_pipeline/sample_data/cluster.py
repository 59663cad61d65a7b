"""Kept for older imports: the throwaway PostgreSQL now lives in `backup_pipeline.throwaway_pg`."""

from backup_pipeline.throwaway_pg import (
    ClusterError,
    LocalCluster,
    free_port,
    server_bindir,
    start_cluster,
)

__all__ = ["ClusterError", "LocalCluster", "free_port", "server_bindir", "start_cluster"]
