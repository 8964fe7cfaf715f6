module github.com/ansflow/ansflow/services/docker-runner

go 1.26.0

require github.com/ansflow/ansflow/pkg v0.0.0

require (
	github.com/docker/docker v28.5.2+incompatible // indirect
	go.uber.org/multierr v1.11.0 // indirect
	go.uber.org/zap v1.28.0 // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
)

replace github.com/ansflow/ansflow/pkg => ../../pkg
