"""Deployment to Kubernetes (GKE first): the plan of steps and the runner that carries them out."""
