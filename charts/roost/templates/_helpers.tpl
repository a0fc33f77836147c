{{/* Chart name. */}}
{{- define "roost.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-wide name: the release name, with the chart name appended unless it is already in it. */}}
{{- define "roost.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "roost.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of one model's objects. Call with (dict "root" $ "model" $name). */}}
{{- define "roost.modelName" -}}
{{- printf "%s-%s" (include "roost.fullname" .root | trunc 50 | trimSuffix "-") .model -}}
{{- end -}}

{{/* Release-wide labels. */}}
{{- define "roost.labels" -}}
helm.sh/chart: {{ include "roost.chart" . }}
app.kubernetes.io/name: {{ include "roost.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: roost
{{- end -}}

{{/* Labels of one model's objects. Call with (dict "root" $ "model" $name). */}}
{{- define "roost.modelLabels" -}}
{{ include "roost.labels" .root }}
app.kubernetes.io/component: {{ .model }}
{{- end -}}

{{/* Selector of one model's pods (stable across upgrades). */}}
{{- define "roost.selectorLabels" -}}
app.kubernetes.io/name: {{ include "roost.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .model }}
{{- end -}}

{{/* Image reference: tag "" = appVersion, plus -fastai (runtime fastai) or -gpu (gpu > 0). */}}
{{- define "roost.image" -}}
{{- $m := .m -}}
{{- $tag := $m.image.tag -}}
{{- if not $tag -}}
{{- $tag = .root.Chart.AppVersion -}}
{{- if eq $m.runtime "fastai" -}}
{{- $tag = printf "%s-fastai" $tag -}}
{{- else if gt (int $m.gpu) 0 -}}
{{- $tag = printf "%s-gpu" $tag -}}
{{- end -}}
{{- end -}}
{{- printf "%s:%s" $m.image.repository $tag -}}
{{- end -}}

{{/* Whether a ServiceMonitor is rendered: forced, or auto-detected. */}}
{{- define "roost.serviceMonitor" -}}
{{- $sm := .Values.metrics.serviceMonitor.enabled -}}
{{- if kindIs "bool" $sm -}}
{{- if $sm }}true{{ end -}}
{{- else if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor" -}}
true
{{- end -}}
{{- end -}}

{{/* ONNX Runtime threads per worker: the value, or the CPU request divided among the workers,
rounded up (at least 1). */}}
{{- define "roost.ortThreads" -}}
{{- $n := int .ortThreads -}}
{{- if eq $n 0 -}}
{{- $workers := max (int (.workers | default 1)) 1 -}}
{{- $cpu := toString (dig "requests" "cpu" "1" .resources) -}}
{{- $millis := 0 -}}
{{- if hasSuffix "m" $cpu -}}
{{- $millis = int (trimSuffix "m" $cpu) -}}
{{- else -}}
{{- $millis = mulf (float64 $cpu) 1000 | ceil | int -}}
{{- end -}}
{{- $per := mul 1000 $workers -}}
{{- $n = div (sub (add $millis $per) 1) $per | int -}}
{{- end -}}
{{- max $n 1 -}}
{{- end -}}

{{/* Artifacts root inside the container. */}}
{{- define "roost.artifactsPath" -}}
{{- if eq .Values.modelSource.type "pvc" -}}
{{- .Values.modelSource.pvc.mountPath -}}
{{- else -}}
{{- .Values.modelSource.image.artifactsPath -}}
{{- end -}}
{{- end -}}

{{/* Whether any model is enabled. */}}
{{- define "roost.anyEnabled" -}}
{{- range $name, $m := .Values.models -}}
{{- if $m.enabled }}true{{ end -}}
{{- end -}}
{{- end -}}

{{/* A model's terminationGracePeriodSeconds: its own, else shutdown's. Call with (dict "root" $ "m" $m). */}}
{{- define "roost.grace" -}}
{{- if kindIs "invalid" .m.terminationGracePeriodSeconds -}}
{{- .root.Values.shutdown.terminationGracePeriodSeconds | int -}}
{{- else -}}
{{- .m.terminationGracePeriodSeconds | int -}}
{{- end -}}
{{- end -}}
