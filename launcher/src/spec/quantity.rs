//! Kubernetes resource quantities (`1Gi`, `500m`, `1.5G`, `2`).
