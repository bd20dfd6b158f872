//go:build tools

// Package tools names the upstream commands `.ci/cluster build` compiles: Kubernetes v1.34.4
// (its staging modules pinned by the replace lines of go.mod) and etcd v3.6.4, the etcd that
// Kubernetes v1.34.4 itself requires, so that both share one set of dependency versions.
package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubeadm"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
