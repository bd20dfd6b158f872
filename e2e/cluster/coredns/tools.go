//go:build tools

// Package tools names CoreDNS v1.12.1, the cluster DNS that kubeadm v1.34 deploys, which
// `.ci/cluster` builds and serves as the cluster's DNS. A module of its own: its dependencies
// differ from Kubernetes' (e2e/cluster/go.mod).
package tools

import _ "github.com/coredns/coredns"
