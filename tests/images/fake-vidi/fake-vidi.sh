#!/bin/sh
# Fake Vidi: follows the container contract (env in, result.json + exit code out) and does
# what words in VIDI_QUERY say:
#   exit=N        exit N (2 bad input, 3 CUDA out of memory, anything else a crash)
#   oom-above=P   exit 3 unless VIDI_PRECISION is P (to test the precision fallback)
#   sleep=N       run N seconds first (stops promptly on SIGTERM)
#   wait=NAME     run until the file NAME appears in the output dir (the test's signal to go on)
echo "fake vidi: precision=$VIDI_PRECISION video=$VIDI_VIDEO model=$VIDI_MODEL_PATH offline=$HF_HUB_OFFLINE"
code=0
for word in $VIDI_QUERY; do
  case "$word" in
    exit=*) code="${word#exit=}" ;;
    oom-above=*) lowest="${word#oom-above=}" ;;
    sleep=*) nap="${word#sleep=}" ;;
    wait=*) until_file="${word#wait=}" ;;
  esac
done
if [ -n "$nap" ]; then
  trap 'echo "fake vidi: stopped"; exit 143' TERM INT
  i=0
  while [ "$i" -lt "$nap" ]; do sleep 1 & wait $!; i=$((i + 1)); done
fi
if [ -n "$until_file" ]; then
  trap 'echo "fake vidi: stopped"; exit 143' TERM INT
  echo "fake vidi: waiting for $VIDI_OUTPUT_DIR/$until_file"
  while [ ! -e "$VIDI_OUTPUT_DIR/$until_file" ]; do sleep 0.1 & wait $!; done
fi
if [ -n "$lowest" ] && [ "$VIDI_PRECISION" != "$lowest" ]; then
  echo "torch.OutOfMemoryError: CUDA out of memory at $VIDI_PRECISION" >&2
  exit 3
fi
case "$code" in
  0)
    [ -r "$VIDI_VIDEO" ] || { echo "video not readable: $VIDI_VIDEO" >&2; exit 2; }
    echo "<html><title>fake preview</title></html>" > "$VIDI_OUTPUT_DIR/preview.html" || exit 1
    printf '{"segments":[[65,72.5],[180,184]],"precision":"%s","videoSeconds":600,"peakVramBytes":1073741824,"model":"fake","preview":"%s/preview.html"}\n' \
      "$VIDI_PRECISION" "$VIDI_OUTPUT_DIR" > "$VIDI_OUTPUT_DIR/result.json" || exit 1
    echo "fake vidi: wrote $VIDI_OUTPUT_DIR/result.json"
    ;;
  2)
    echo "bad input: video not found: $VIDI_VIDEO" >&2
    # The contract's one-line reason, where the operator reads it back.
    echo "bad input: VIDI_VIDEO: $VIDI_VIDEO is not a video" > "$VIDI_TERMINATION_LOG"
    ;;
  3) echo "torch.OutOfMemoryError: CUDA out of memory" >&2 ;;
  *) echo "Traceback: something broke" >&2 ;;
esac
exit "$code"
