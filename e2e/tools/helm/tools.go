//go:build tools

// Package tools pins Helm, which `gpuplane assess` runs to render charts in the tests (scripts/helm).
package tools

import _ "helm.sh/helm/v3/cmd/helm"
