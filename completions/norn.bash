_norn_completion() {
    local IFS=$'\n'
    local response

    # The line up to the cursor, not COMP_WORDS: bash splits those at ':' and '='.
    response=$(env COMP_LINE="${COMP_LINE:0:COMP_POINT}" COMP_WORDBREAKS="$COMP_WORDBREAKS" \
_NORN_COMPLETE=bash_complete $1)

    for completion in $response; do
        IFS=',' read type value <<< "$completion"

        if [[ $type == 'dir' ]]; then
            COMPREPLY=()
            compopt -o dirnames
        elif [[ $type == 'file' ]]; then
            COMPREPLY=()
            compopt -o default
        elif [[ $type == 'plain' ]]; then
            COMPREPLY+=($value)
        fi
    done

    return 0
}

_norn_completion_setup() {
    complete -o nosort -F _norn_completion norn
}

_norn_completion_setup;
