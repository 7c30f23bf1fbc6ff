#!/bin/sh
# As the GPU gate (`<image> gpu gate ...`): no GPU to check, let Vidi start.
if [ "$1" = "gpu" ]; then
  echo "stub gate: not checking GPU memory"
  exit 0
fi
# As Vidi: follows the container contract; words in VIDI_QUERY choose the outcome:
#   exit=N   exit N (2 bad input, 3 CUDA out of memory, 1 anything else)
#   sleep=N  run N seconds first (stops promptly on SIGTERM)
code=0
for word in $VIDI_QUERY; do
  case "$word" in
    exit=*) code="${word#exit=}" ;;
    sleep=*) nap="${word#sleep=}" ;;
  esac
done
if [ -n "$nap" ]; then
  trap 'echo "stub vidi: stopped"; exit 143' TERM INT
  i=0
  while [ "$i" -lt "$nap" ]; do sleep 1 & wait $!; i=$((i + 1)); done
fi
case "$code" in
  0)
    result='{"segments":[[65,72.5],[180,184]],"precision":"'"$VIDI_PRECISION"'","videoSeconds":600,"peakVramBytes":0}'
    echo "$result" > "$VIDI_OUTPUT_DIR/result.json" || exit 1
    printf '%s' "$result" > /dev/termination-log
    ;;
  2) printf 'bad input: VIDI_VIDEO: %s is not a video' "$VIDI_VIDEO" > /dev/termination-log ;;
  3) echo "torch.OutOfMemoryError: CUDA out of memory" >&2 ;;
  *) echo "Traceback: something broke" >&2 ;;
esac
exit "$code"
