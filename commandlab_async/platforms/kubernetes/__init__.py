"""Kubernetes on a kubeconfig cluster, EKS, AKS or GKE: one pod per sandbox (no driver yet)."""
