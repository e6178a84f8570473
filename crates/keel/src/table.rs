//! Plain-text tables for CLI listings: columns as wide as their widest cell.

/// Renders `rows` under `headers`, left-aligned, two spaces between columns.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(width - cell.chars().count() + 2));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_fit_their_widest_cell() {
        let rows = vec![
            vec!["a-long-name".to_owned(), "x".to_owned(), "".to_owned()],
            vec!["b".to_owned(), "yz".to_owned(), "z".to_owned()],
        ];
        assert_eq!(
            super::render(&["NAME", "ROLE", "NOTE"], &rows),
            "NAME         ROLE  NOTE\na-long-name  x\nb            yz    z\n"
        );
    }
}
