module github.com/ansflow/ansflow/services/pipeline

go 1.26.0

require github.com/ansflow/ansflow/pkg v0.0.0

replace github.com/ansflow/ansflow/pkg => ../../pkg
